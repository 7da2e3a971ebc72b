-- kind: filter
-- Quality heuristics after Gopher (Rae et al. 2021) and C4 (Raffel et al. 2020). The counts come
-- from `text_stats(text)`, a vectorised numpy UDF (tasks/clean/text.py): counting letters or words per
-- document with regular expressions costs about 10x more. The first failing check names the reason:
--   no_words         nothing but whitespace
--   alpha_share      letters / non-space characters < min_alpha_share (symbol soup, digit strings)
--   short_words      mean word length < min_mean_word_len          } documents of at least
--   long_words       mean word length > max_mean_word_len          } quality_min_words words:
--   symbols          ('#' + ellipses) / words > max_symbol_word_ratio } short texts give noisy means
--   duplicate_lines  bytes of lines repeated inside the document / bytes of all lines > max_dup_line_share
--   no_punctuation   lines ending in punctuation / lines < min_punct_line_share, for documents of at
--                    least punct_min_lines lines (verse keeps most of its lines unpunctuated, so the
--                    default threshold is low: it catches menus and word lists)
-- A threshold of 0 (or a max of a very large value) switches its check off.
WITH measured AS (
    SELECT *, text_stats(text) AS _s
    FROM input
)
SELECT
    * EXCLUDE (_s),
    CASE
        WHEN _s.n_words = 0 THEN 'no_words'
        WHEN _s.n_alpha < getvariable('min_alpha_share') * (_s.n_chars - _s.n_space) THEN 'alpha_share'
        WHEN _s.n_words >= getvariable('quality_min_words')
            AND _s.n_chars - _s.n_space < getvariable('min_mean_word_len') * _s.n_words THEN 'short_words'
        WHEN _s.n_words >= getvariable('quality_min_words')
            AND _s.n_chars - _s.n_space > getvariable('max_mean_word_len') * _s.n_words THEN 'long_words'
        WHEN _s.n_words >= getvariable('quality_min_words')
            AND _s.n_hash + _s.n_ellipsis > getvariable('max_symbol_word_ratio') * _s.n_words THEN 'symbols'
        WHEN _s.dup_line_bytes > getvariable('max_dup_line_share') * _s.line_bytes THEN 'duplicate_lines'
        WHEN _s.n_lines >= getvariable('punct_min_lines')
            AND _s.n_punct_lines < getvariable('min_punct_line_share') * _s.n_lines THEN 'no_punctuation'
    END AS reason
FROM measured
