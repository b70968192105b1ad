-- Snapshots to MyMedicalData: an outbox that survives restarts; rows are retried until delivered.

CREATE TABLE snapshots (
    id              uuid        PRIMARY KEY,         -- also the Idempotency-Key of every attempt
    ward            text        NOT NULL,
    patient_id      text        NOT NULL,
    requested_by    text        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    from_ts         timestamptz NOT NULL,
    to_ts           timestamptz NOT NULL,
    bundle          jsonb       NOT NULL,
    state           text        NOT NULL DEFAULT 'pending',  -- pending | delivered
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    delivered_at    timestamptz,
    response_status integer
);
CREATE INDEX snapshots_due ON snapshots (next_attempt_at) WHERE state = 'pending';
