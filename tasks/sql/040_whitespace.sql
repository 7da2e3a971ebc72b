-- kind: map
-- Line ends and blank space: CRLF and lone CR become LF, spaces and tabs at the end of a line go,
-- runs of blank lines shrink to one blank line, and the text is trimmed at both ends. Indentation
-- and runs of spaces inside a line stay: the code in docstrings depends on them.
-- Only rows that need it are rewritten.
SELECT * REPLACE (
    CASE
        WHEN regexp_matches(text, '\r|[ \t]\n|\n\n\n|^\s|\s$')
        THEN trim(
            regexp_replace(
                regexp_replace(
                    regexp_replace(text, '\r\n?', chr(10), 'g'),
                    '[ \t]+\n', chr(10), 'g'
                ),
                '\n{3,}', chr(10) || chr(10), 'g'
            ),
            ' ' || chr(9) || chr(10)
        )
        ELSE text
    END AS text
)
FROM input
