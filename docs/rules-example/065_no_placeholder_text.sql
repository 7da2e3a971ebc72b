-- kind: filter
-- Drop placeholder text. A document holding "lorem ipsum" or "TODO: write" is filler, not language.
SELECT *,
       CASE
           WHEN contains(lower(text), 'lorem ipsum') THEN 'lorem ipsum'
           WHEN contains(lower(text), 'todo: write') THEN 'todo placeholder'
       END AS reason
FROM input
