-- kind: map
-- PII redaction with typed placeholders: e-mail addresses -> <EMAIL>, IPv4 -> <IPV4>,
-- IPv6 -> <IPV6>, phone numbers -> <PHONE>. Each type is switched by a variable (config
-- `pii_types`). Phone numbers: international forms that start with "+<country code>", and
-- North-American forms (555) 123-4567, 555-123-4567, 555.123.4567; digits separated only by
-- spaces are left alone, so tables and lists of numbers survive. Version strings shaped like
-- a.b.c.d with every part <= 255 cannot be told from IPv4 addresses and are redacted too.
-- `_pii` is a cheap superset of all four patterns: rows without a hit are never rewritten.
-- The cleaning report never shows the redacted values (see tasks/clean/engine.py). Combining marks
-- right after a redacted value belonged to its last character and go with it: left behind, they
-- would combine with the placeholder's '>' (U+0338 makes it '≯') and the text would not be NFC.
WITH flagged AS (
    SELECT
        *,
        regexp_matches(
            text, '@|::|\+[1-9]|[0-9]\.[0-9]{1,3}\.[0-9]|[0-9A-Fa-f]:[0-9A-Fa-f]{1,4}:|[0-9]{3}[.-][0-9]{4}'
        ) AS _pii
    FROM input
),
email AS (
    SELECT * REPLACE (
        CASE WHEN _pii AND getvariable('pii_email') THEN regexp_replace(
            text, '[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}', '<EMAIL>', 'g'
        ) ELSE text END AS text
    )
    FROM flagged
),
ipv4 AS (
    SELECT * REPLACE (
        CASE WHEN _pii AND getvariable('pii_ipv4') THEN regexp_replace(
            text,
            '\b(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\b',
            '<IPV4>', 'g'
        ) ELSE text END AS text
    )
    FROM email
),
ipv6 AS (
    -- full form; "::" inside; "::" at the end; "::" at the start (::1, ::ffff:...)
    SELECT * REPLACE (
        CASE WHEN _pii AND getvariable('pii_ipv6') THEN regexp_replace(
            regexp_replace(
                regexp_replace(
                    regexp_replace(text, '\b(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}\b', '<IPV6>', 'g'),
                    '\b(?:[0-9A-Fa-f]{1,4}:){1,6}:(?:[0-9A-Fa-f]{1,4}:){0,5}[0-9A-Fa-f]{1,4}\b', '<IPV6>', 'g'
                ),
                '\b(?:[0-9A-Fa-f]{1,4}:){2,7}:', '<IPV6>', 'g'
            ),
            '::(?:[0-9A-Fa-f]{1,4}:){0,6}[0-9A-Fa-f]{1,4}\b', '<IPV6>', 'g'
        ) ELSE text END AS text
    )
    FROM ipv4
),
phone AS (
    SELECT * REPLACE (
        CASE WHEN _pii AND getvariable('pii_phone') THEN regexp_replace(
            regexp_replace(
                text,
                '\+[1-9][0-9]{0,2}[ .-]?(?:\([0-9]{1,4}\)[ .-]?)?[0-9]{2,4}[ .-]?[0-9]{3,4}[ .-]?[0-9]{3,4}\b',
                '<PHONE>', 'g'
            ),
            '(?:\([0-9]{3}\) ?|\b[0-9]{3}[.-])[0-9]{3}[.-][0-9]{4}\b', '<PHONE>', 'g'
        ) ELSE text END AS text
    )
    FROM ipv6
)
SELECT * EXCLUDE (_pii) REPLACE (
    CASE WHEN _pii THEN regexp_replace(text, '(<(?:EMAIL|IPV4|IPV6|PHONE)>)\p{M}+', '\1', 'g') ELSE text END AS text
)
FROM phone
