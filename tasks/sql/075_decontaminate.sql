-- kind: filter
-- Decontamination: drop a training document that shares a `decontam_ngram`-word n-gram
-- (normalised words, 13 by default) with an evaluation text (`eval_texts`; the pipeline adds
-- evaluate.eval_text), so that the model is not scored on text it trained on. Every overlap is
-- kept in `eval_hit` (the first shared n-gram, how many were shared, which evaluation text) and
-- reported, dropped or not: with `decontaminate` false nothing is dropped. The documents a frozen
-- evaluation set was made from (named by doc id in its manifest) stay (see tasks/clean/decontam.py).
SELECT
    *,
    CASE
        WHEN eval_hit IS NOT NULL AND getvariable('decontaminate') AND NOT eval_hit.source
        THEN 'eval_overlap'
    END AS reason
FROM (SELECT *, CASE WHEN _drop IS NULL THEN eval_overlap(text, doc_id) END AS eval_hit FROM input)
