-- culm's PostgreSQL schema, version 5: a run whose handler stopped on an operator's
-- cancellation (`POST /v1/jobs/{id}/cancel` while it ran) is recorded as `cancelled`.
ALTER TABLE culm_job_runs DROP CONSTRAINT IF EXISTS culm_job_runs_outcome_check;
ALTER TABLE culm_job_runs ADD CONSTRAINT culm_job_runs_outcome_check
    CHECK (outcome IN ('succeeded', 'failed_will_retry', 'dead', 'deferred', 'superseded', 'expired', 'cancelled'));
