-- kind: filter
-- Language identification with CLD2 (tasks/clean/langid.py): every document gets `lang` (the
-- language code CLD2 gives, ISO 639-1 where there is one; 'und' when it finds no reliable
-- language) and `lang_score` (the share of the text in that language). With the allow-list
-- `languages` set, a document in another language is dropped, the reason being its language
-- ('und' is kept only when the list names it); an empty list keeps every document.
SELECT
    * EXCLUDE (_lang),
    _lang.lang AS lang,
    _lang.score AS lang_score,
    CASE
        WHEN getvariable('languages') <> '' AND _lang.lang IS NOT NULL
            AND NOT contains(getvariable('languages'), ',' || _lang.lang || ',')
        THEN _lang.lang
    END AS reason
FROM (SELECT *, CASE WHEN _drop IS NULL THEN language_of(text) END AS _lang FROM input)
