-- kind: filter
-- Length bounds, in characters of the text as cleaned so far: drop empty documents (an empty
-- or missing text in the input, or one that held only whitespace and control characters), and
-- documents shorter than `min_chars` or longer than `max_chars`.
SELECT
    *,
    CASE
        WHEN text = '' THEN 'empty'
        WHEN length(text) < getvariable('min_chars') THEN 'too_short'
        WHEN length(text) > getvariable('max_chars') THEN 'too_long'
    END AS reason
FROM input
