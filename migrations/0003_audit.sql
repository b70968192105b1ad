-- Who did what: acknowledgements, admissions and moves, threshold changes, discharges, uploads.

CREATE TABLE audit (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          timestamptz NOT NULL,
    ward        text        NOT NULL,
    actor       text        NOT NULL,   -- the token's name, never the token
    role        text        NOT NULL,
    action      text        NOT NULL,   -- acknowledge | put_patient | discharge | snapshot
    patient_id  text,
    alert_id    uuid,
    detail      jsonb       NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX audit_by_patient ON audit (ward, patient_id, at);

-- A discharged patient keeps its readings (24 h) but leaves the lists; a new reading re-admits it.
ALTER TABLE patients ADD COLUMN discharged_at timestamptz;
