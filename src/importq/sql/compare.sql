-- Comparing two runs of one upload (importq.pipeline.compare).

-- name: moved_lines
-- The lines whose outcome differs between batch a's results and batch b's
-- (templates {a}, {b}: results tables), in line order: each line's two outcomes ('none'
-- where a run has no result for it: a chunk cancelled before it ran) and its report
-- record (line, outcomes, messages; cells guarded as reports' are).
WITH a AS (
    SELECT u.line, r.outcome, u.message
    FROM {a} r CROSS JOIN LATERAL unnest(r.lines, r.messages) AS u(line, message)
), b AS (
    SELECT u.line, r.outcome, u.message
    FROM {b} r CROSS JOIN LATERAL unnest(r.lines, r.messages) AS u(line, message)
)
SELECT coalesce(a.outcome, 'none') AS before, coalesce(b.outcome, 'none') AS after,
       concat_ws(',', line, coalesce(a.outcome, 'none'),
                 importq_report_cell(a.message, false), coalesce(b.outcome, 'none'),
                 importq_report_cell(b.message, false))
FROM a FULL JOIN b USING (line)
WHERE a.outcome IS DISTINCT FROM b.outcome
ORDER BY line;

-- name: results_exist
-- Whether both batches' results tables are still there (names as to_regclass reads them).
SELECT to_regclass(%(a)s) IS NOT NULL AND to_regclass(%(b)s) IS NOT NULL;
