-- culm's PostgreSQL schema, version 1: the job ledger, the dead-letter archive and the
-- transactional outbox. Applied by `culm migrate` (or `culm run` with
-- database.migrate_on_start); see docs/postgres.md.

-- Every attempt of every job: one row per run, written in batches by the ledger writer.
CREATE TABLE IF NOT EXISTS culm_job_runs (
    -- ULID minted when the run finished; replays of a spilled batch are no-ops.
    run_id      text PRIMARY KEY,
    job_id      text        NOT NULL,
    job         text        NOT NULL,
    queue       text        NOT NULL,
    tier        text        NOT NULL,
    attempt     integer     NOT NULL,
    outcome     text        NOT NULL
        CHECK (outcome IN ('succeeded', 'failed_will_retry', 'dead', 'deferred')),
    error       text,
    enqueued_at timestamptz,
    started_at  timestamptz,
    finished_at timestamptz NOT NULL,
    duration_ms double precision NOT NULL DEFAULT 0,
    -- Retries and deferrals: when the next attempt is due.
    next_run_at timestamptz,
    worker_id   text        NOT NULL,
    -- The handler's Outcome summary, at most 512 bytes.
    summary     text
);
-- "What happened to job X": every attempt in order.
CREATE INDEX IF NOT EXISTS culm_job_runs_by_job_id ON culm_job_runs (job_id, finished_at);
-- "How did job type T do since t": by type and time.
CREATE INDEX IF NOT EXISTS culm_job_runs_by_type_time ON culm_job_runs (job, finished_at DESC);
-- "Failures between t1 and t2": a partial index of failed attempts only.
CREATE INDEX IF NOT EXISTS culm_job_runs_failures ON culm_job_runs (finished_at DESC, queue)
    WHERE outcome <> 'succeeded';
-- Retention deletes by age; a BRIN index is tiny on an append-mostly table.
CREATE INDEX IF NOT EXISTS culm_job_runs_finished_brin ON culm_job_runs USING brin (finished_at);

-- Dead-lettered jobs, kept for audit and re-drive after Redis has let them go.
CREATE TABLE IF NOT EXISTS culm_dead_jobs (
    job_id          text PRIMARY KEY,
    job             text        NOT NULL,
    queue           text        NOT NULL,
    tier            text        NOT NULL,
    payload         jsonb       NOT NULL,
    idempotency_key text,
    attempts        integer     NOT NULL,
    last_error      text,
    -- Every failed attempt from the ledger: [{"attempt", "at" (ms), "error"}], oldest first.
    errors          jsonb       NOT NULL DEFAULT '[]'::jsonb,
    enqueued_at     timestamptz,
    died_at         timestamptz NOT NULL,
    -- Set when an operator re-drove the job; the row stays for audit.
    redriven_at     timestamptz,
    redriven_as     text
);
CREATE INDEX IF NOT EXISTS culm_dead_jobs_by_queue_time ON culm_dead_jobs (queue, died_at DESC)
    WHERE redriven_at IS NULL;
CREATE INDEX IF NOT EXISTS culm_dead_jobs_by_time ON culm_dead_jobs (died_at DESC);

-- The transactional outbox: another service inserts here in its own transaction, together
-- with its business rows; culm's relay moves committed rows to Redis and deletes them.
CREATE TABLE IF NOT EXISTS culm_outbox (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job             text        NOT NULL,
    payload         jsonb       NOT NULL DEFAULT '{}'::jsonb,
    queue           text,
    run_at          timestamptz,
    idempotency_key text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    -- Relay bookkeeping: failed hand-offs back off; rejected rows (unknown job type, bad
    -- payload) stay with their error until someone fixes or deletes them.
    attempts        integer     NOT NULL DEFAULT 0,
    available_at    timestamptz NOT NULL DEFAULT now(),
    rejected_at     timestamptz,
    last_error      text
);
CREATE INDEX IF NOT EXISTS culm_outbox_ready ON culm_outbox (available_at, id) WHERE rejected_at IS NULL;

-- Wakes relays on commit (NOTIFY is delivered only when the inserting transaction commits).
CREATE OR REPLACE FUNCTION culm_outbox_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('culm_outbox', '');
    RETURN NULL;
END
$$;
DROP TRIGGER IF EXISTS culm_outbox_notify ON culm_outbox;
CREATE TRIGGER culm_outbox_notify AFTER INSERT ON culm_outbox
    FOR EACH STATEMENT EXECUTE FUNCTION culm_outbox_notify();
