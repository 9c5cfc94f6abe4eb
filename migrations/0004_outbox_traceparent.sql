-- culm's PostgreSQL schema, version 4: an outbox row may carry the W3C `traceparent` of
-- the transaction that wrote it; the relay stores it with the job, so the job's attempts,
-- follow-ups and partner calls join the writer's trace. NULL: no trace context.
ALTER TABLE culm_outbox ADD COLUMN IF NOT EXISTS traceparent text;
