-- culm's PostgreSQL schema, version 2: a run whose lease expired and was taken over
-- before it finished is recorded as `superseded`: its handler ran, but its outcome was
-- fenced off and not applied (the job's later run decides its fate).
ALTER TABLE culm_job_runs DROP CONSTRAINT IF EXISTS culm_job_runs_outcome_check;
ALTER TABLE culm_job_runs ADD CONSTRAINT culm_job_runs_outcome_check
    CHECK (outcome IN ('succeeded', 'failed_will_retry', 'dead', 'deferred', 'superseded'));
