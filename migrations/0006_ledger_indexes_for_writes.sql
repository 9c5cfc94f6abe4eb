-- culm's PostgreSQL schema, version 6: the ledger's indexes cost less per written row,
-- and still serve the same questions.
--
-- 1. The primary key becomes (job_id, run_id) and takes over from the separate
--    (job_id, finished_at) index: "what happened to job X" reads the key's job_id prefix
--    (a job has a handful of rows, sorted in memory), and replays still skip a row that
--    is already there (run_id is unique on its own, a ULID minted per run). One index
--    fewer to update on every insert.
-- 2. The "how did job type T do since t" index keeps finished_at ascending. Runs are
--    written in finished_at order, so with a descending column every insert landed at
--    the left edge of its job type's range and split pages there; ascending, inserts
--    append at the right of the range, and a newest-first query reads it backwards.
--
-- New indexes are built before the old ones go, so every query keeps one. Ledger writes
-- wait while they build; on a large table the writer spills to Redis meanwhile
-- (database.ledger.spill) and replays afterwards.
CREATE INDEX IF NOT EXISTS culm_job_runs_by_type ON culm_job_runs (job, finished_at);
DROP INDEX IF EXISTS culm_job_runs_by_type_time;
CREATE UNIQUE INDEX IF NOT EXISTS culm_job_runs_job_run ON culm_job_runs (job_id, run_id);
ALTER TABLE culm_job_runs DROP CONSTRAINT IF EXISTS culm_job_runs_pkey;
ALTER TABLE culm_job_runs ADD CONSTRAINT culm_job_runs_pkey PRIMARY KEY USING INDEX culm_job_runs_job_run;
DROP INDEX IF EXISTS culm_job_runs_by_job_id;
