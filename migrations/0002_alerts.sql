-- Alerts: the current state of each alert, and every state change it went through.

CREATE TABLE alerts (
    id          uuid        PRIMARY KEY,   -- stable across all state changes (CONTRACT.md §3)
    ward        text        NOT NULL,
    patient_id  text        NOT NULL,
    station     text,
    rule        text        NOT NULL,
    vital       text,
    kind        text        NOT NULL,
    priority    text        NOT NULL,
    state       text        NOT NULL,
    raised_ts   timestamptz NOT NULL,      -- event time of the reading that raised it
    ts          timestamptz NOT NULL,      -- event time of the latest change
    updated_at  timestamptz NOT NULL DEFAULT now(),
    doc         jsonb       NOT NULL       -- the full alert object as sent
);
CREATE INDEX alerts_open ON alerts (ward, patient_id) WHERE state <> 'resolved';
CREATE INDEX alerts_by_patient ON alerts (ward, patient_id, raised_ts);

CREATE TABLE alert_events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    alert_id    uuid        NOT NULL,
    ward        text        NOT NULL,
    patient_id  text        NOT NULL,
    state       text        NOT NULL,
    priority    text        NOT NULL,
    ts          timestamptz NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    doc         jsonb       NOT NULL
);
CREATE INDEX alert_events_by_alert ON alert_events (alert_id, id);
