-- kind: map
-- Unicode NFC normalisation: a precomposed character and the same character written as a base
-- letter plus combining marks ("é" as U+00E9 or as "e" + U+0301) become one form, so that
-- deduplication, the tokenizer and the quality heuristics see one spelling. DuckDB's
-- nfc_normalize is fast on text that is already NFC (all ASCII text is). It stops at a NUL
-- character, so it runs after control_chars (which removes NULs), and a text that still holds
-- one (control_chars switched off) is left as it is rather than cut short.
SELECT * REPLACE (CASE WHEN contains(text, chr(0)) THEN text ELSE nfc_normalize(text) END AS text)
FROM input
