-- culm's PostgreSQL schema, version 6: the "how did job type T do since t" index keeps
-- finished_at ascending. Runs are written in finished_at order, so with a descending
-- column every insert landed at the left edge of its job type's range and split pages
-- there; ascending, inserts append at the right of the range, and a newest-first query
-- reads the same index backwards (about 15 % less work per inserted row, BENCHMARKS.md).
--
-- Migrations run in one transaction on a connection with database.statement_timeout,
-- which building an index over a large ledger can exceed: this one has no limit. The
-- new index is built first (writes wait meanwhile, reads do not; a ledger writer that
-- waits longer than its insert timeout spills to Redis and replays afterwards), then the
-- old one is dropped, which holds an exclusive lock only until the transaction commits.
-- Replicas still running the previous culm keep working: the primary key is unchanged.
SET LOCAL statement_timeout = 0;
CREATE INDEX IF NOT EXISTS culm_job_runs_by_type ON culm_job_runs (job, finished_at);
DROP INDEX IF EXISTS culm_job_runs_by_type_time;
