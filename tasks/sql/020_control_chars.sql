-- kind: map
-- Control and invisible characters. Vertical tab, form feed, NEL and the Unicode line and
-- paragraph separators become a newline; the other C0 controls (except tab, newline, carriage
-- return), DEL, the C1 controls, the soft hyphen, zero-width space, word joiner and byte order
-- mark are removed; Unicode spaces (no-break, en, em, thin, ideographic, ...) become a plain space.
-- Zero-width joiner and non-joiner stay: Persian, Indic scripts and emoji sequences need them.
-- Only rows that hold such a character are rewritten.
SELECT * REPLACE (
    CASE
        WHEN regexp_matches(
            text,
            '[\x00-\x08\x0B\x0C\x0E-\x1F\x7F-\x9F\x{00A0}\x{00AD}\x{1680}\x{2000}-\x{200B}\x{2028}\x{2029}\x{202F}\x{205F}\x{2060}\x{3000}\x{FEFF}]'
        )
        THEN regexp_replace(
            regexp_replace(
                regexp_replace(text, '[\x0B\x0C\x{0085}\x{2028}\x{2029}]', chr(10), 'g'),
                '[\x00-\x08\x0E-\x1F\x7F-\x9F\x{00AD}\x{200B}\x{2060}\x{FEFF}]', '', 'g'
            ),
            '[\x{00A0}\x{1680}\x{2000}-\x{200A}\x{202F}\x{205F}\x{3000}]', ' ', 'g'
        )
        ELSE text
    END AS text
)
FROM input
