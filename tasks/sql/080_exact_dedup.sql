-- kind: corpus
-- Exact deduplication over the whole corpus, on normalised text. The key, `norm_key`, is the md5
-- of the cleaned text (NFC, control characters and line ends normalised, trimmed) lower-cased,
-- computed per shard (tasks/clean/engine.py), so copies that differ only in case, Unicode form, trailing
-- blanks or line-end style count as one (re-indented copies are left to near-dedup). The input's
-- `gid` numbers the surviving documents in (doc_id, source, path, offset) order: the first copy
-- is kept, and every later copy is dropped with `dup_of` pointing at it. Deterministic.
SELECT gid, 'exact' AS reason, keep AS dup_of, 1.0 AS similarity
FROM (
    SELECT gid, min(gid) OVER (PARTITION BY norm_key) AS keep
    FROM input
)
WHERE gid <> keep
