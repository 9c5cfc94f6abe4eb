-- culm's PostgreSQL schema, version 3: a job whose `expires_at` passed before an attempt
-- could start is not run; that attempt is recorded as `expired`.
ALTER TABLE culm_job_runs DROP CONSTRAINT IF EXISTS culm_job_runs_outcome_check;
ALTER TABLE culm_job_runs ADD CONSTRAINT culm_job_runs_outcome_check
    CHECK (outcome IN ('succeeded', 'failed_will_retry', 'dead', 'deferred', 'superseded', 'expired'));
