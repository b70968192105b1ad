-- Patients, readings partitioned by hour of event time, and rejected inputs.

CREATE TABLE patients (
    ward        text        NOT NULL,
    patient_id  text        NOT NULL,
    station     text,
    bed         text,
    thresholds  jsonb       NOT NULL DEFAULT '{}'::jsonb,
    admitted_at timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (ward, patient_id)
);
CREATE INDEX patients_station ON patients (ward, station);

-- One row per reading; an ECG chunk is one row with its samples packed as
-- little-endian float32 in `wave` (PERF.md: real[] is 12x slower to COPY).
-- `dedup` is '' for readings without seq, else 'device#seq'; the unique index
-- stores a redelivered reading once and is also the history query's index.
CREATE TABLE readings (
    ward        text             NOT NULL,
    patient_id  text             NOT NULL,
    vital       text             NOT NULL,
    ts          timestamptz      NOT NULL,
    dedup       text             NOT NULL DEFAULT '',
    num         double precision,          -- number vitals
    doc         jsonb,                     -- object / enum vitals, waveform header {"hz": n}
    wave        bytea,                     -- waveform samples, float32 LE
    device      text,
    seq         bigint,
    received_at timestamptz      NOT NULL
) PARTITION BY RANGE (ts);
CREATE UNIQUE INDEX readings_identity ON readings (ward, patient_id, vital, ts, dedup);

CREATE TABLE dead_letters (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ward         text        NOT NULL,
    received_at  timestamptz NOT NULL,
    topic        text        NOT NULL,
    reason       text        NOT NULL,
    detail       text        NOT NULL,
    payload      bytea       NOT NULL,  -- truncated
    payload_size integer     NOT NULL
);
CREATE INDEX dead_letters_received ON dead_letters (ward, received_at);
