-- kind: map
-- Repair mojibake: UTF-8 text that was once decoded as cp1252 or Latin-1 and saved again
-- ("IntroduÃ§Ã£o" -> "Introdução"). The repair runs in the Python UDF `fix_mojibake` (a fast
-- re-decode of each suspicious run, ftfy for what is left), so only rows that a cheap regular
-- expression flags reach Python: a UTF-8 lead byte read as cp1252 (Â..ô) followed by a
-- continuation byte read as cp1252 (U+0080..U+00BF or one of cp1252's specials € ‚ ƒ „ … † ‡ ˆ ‰
-- Š ‹ Œ Ž ‘ ’ “ ” • – — ˜ ™ š › œ ž Ÿ). ASCII-only text (strlen = length) skips even the regex.
-- Rows where the next rules could still reveal mojibake (a lead character before a character
-- control_chars removes or turns into a space; a combining mark, which nfc may compose into a
-- lead) go to the UDF too, which also repairs the text as those rules will leave it: cleaning
-- cleaned text changes nothing.
SELECT * REPLACE (
    CASE
        WHEN strlen(text) = length(text) THEN text
        WHEN regexp_matches(
            text,
            '[\x{00C2}-\x{00F4}][\x{0080}-\x{00BF}\x{0152}\x{0153}\x{0160}\x{0161}\x{0178}\x{017D}\x{017E}\x{0192}\x{02C6}\x{02DC}\x{2013}\x{2014}\x{2018}-\x{201A}\x{201C}-\x{201E}\x{2020}-\x{2022}\x{2026}\x{2030}\x{2039}\x{203A}\x{20AC}\x{2122}]'
        )
        THEN fix_mojibake(text)
        WHEN regexp_matches(
            text,
            '[\x{00C2}-\x{00F4}\x{011F}][\x00-\x08\x0E-\x1F\x7F-\x9F\x{00AD}\x{1680}\x{2000}-\x{200B}\x{202F}\x{205F}\x{2060}\x{3000}\x{FEFF}]|[\x{0300}-\x{036F}]'
        )
        THEN fix_mojibake(text)
        ELSE text
    END AS text
)
FROM input
