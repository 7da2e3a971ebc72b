-- kind: candidates
-- Near-deduplication, step 1: LSH buckets. Every document's MinHash signature is cut into bands
-- and each band hashed to one key (`bands`, computed per shard by tasks/clean/minhash.py; the key is
-- salted with the band's index). Documents that share any band key are candidates: most keys are
-- one document's, so the keys held by more than one are found first (a count per key), and only
-- their documents are gathered into buckets. Each bucket yields the pairs (first member, other
-- member) and (member, next member), in `gid` order.
-- Step 2 (tasks/clean/dedup.py): every pair is screened with the 8-bit signatures and decided by its
-- true shingle Jaccard; in gid order, a document similar to one kept is dropped.
WITH keyed AS (
    SELECT gid, unnest(bands) AS band_key
    FROM input
    WHERE bands IS NOT NULL
),
shared AS (
    SELECT band_key
    FROM keyed
    GROUP BY band_key
    HAVING count(*) > 1
),
buckets AS (
    SELECT list(gid ORDER BY gid) AS m
    FROM keyed SEMI JOIN shared USING (band_key)
    GROUP BY band_key
),
pairs AS (
    SELECT m[1] AS a, unnest(m[2:]) AS b FROM buckets
    UNION ALL
    SELECT unnest(m[1:len(m) - 1]) AS a, unnest(m[2:]) AS b FROM buckets
)
SELECT DISTINCT a, b
FROM pairs
