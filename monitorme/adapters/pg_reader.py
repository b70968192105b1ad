"""Read side for the HTTP API: patients and history, with peak-keeping downsampling."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import numpy as np
import orjson

from monitorme.adapters.fhir_upload import snapshot_state
from monitorme.adapters.pg_codecs import init_connection
from monitorme.core.alerts import Alert, alert_from_json
from monitorme.core.definitions import PipelineRegistry, ValueKind
from monitorme.core.downsample import change_points, minmax_indices
from monitorme.core.fhir import snapshot_bundle
from monitorme.core.model import PatientId, Reading, Waveform

MAX_READINGS = 200_000  # one reply; beyond it the caller must narrow the range or downsample


class TooManyReadings(Exception):
    """The requested range holds more readings than one reply may carry."""

    def __init__(self, count: int) -> None:
        super().__init__(count)
        self.count = count


@dataclass(frozen=True, slots=True)
class PatientRow:
    patient: str
    station: str | None
    bed: str | None
    thresholds: dict[str, Any]
    admitted_ms: int

    def as_json(self) -> dict[str, Any]:
        return {
            "patient": self.patient, "station": self.station, "bed": self.bed,
            "thresholds": self.thresholds, "admitted": self.admitted_ms,
        }


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 4) -> asyncpg.Pool:
    """A small pool for API reads (the writer has its own connection)."""
    return await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, init=init_connection, timeout=10)


class PgReader:
    """Queries for one ward."""

    def __init__(self, pool: asyncpg.Pool, ward: str, registry: PipelineRegistry) -> None:
        self.pool = pool
        self.ward = ward
        self.registry = registry

    async def ping(self) -> bool:
        try:
            async with self.pool.acquire(timeout=2) as conn:
                await conn.fetchval("SELECT 1", timeout=2)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
            return False
        return True

    async def patients(self, station: str | None = None) -> list[PatientRow]:
        sql = (
            "SELECT patient_id, station, bed, thresholds, admitted_at FROM patients"
            " WHERE ward = $1 AND discharged_at IS NULL"
            + (" AND station = $2" if station is not None else "")
            + " ORDER BY patient_id"
        )
        args: list[Any] = [self.ward] + ([station] if station is not None else [])
        rows = await self.pool.fetch(sql, *args)
        return [_patient(r) for r in rows]

    async def patient(self, patient: str) -> PatientRow | None:
        row = await self.pool.fetchrow(
            "SELECT patient_id, station, bed, thresholds, admitted_at FROM patients"
            " WHERE ward = $1 AND patient_id = $2 AND discharged_at IS NULL", self.ward, patient,
        )
        return _patient(row) if row else None

    async def put_patient(self, patient: str, station: str | None, bed: str | None,
                          thresholds: dict[str, Any] | None) -> PatientRow:
        """Admit or move a patient (fields left None keep their value; thresholds merge)."""
        row = await self.pool.fetchrow(
            "INSERT INTO patients (ward, patient_id, station, bed, thresholds)"
            " VALUES ($1, $2, $3, $4, COALESCE($5::jsonb, '{}'::jsonb))"
            " ON CONFLICT (ward, patient_id) DO UPDATE SET"
            "  station = CASE WHEN $6 THEN EXCLUDED.station ELSE patients.station END,"
            "  bed = CASE WHEN $7 THEN EXCLUDED.bed ELSE patients.bed END,"
            "  thresholds = patients.thresholds || COALESCE($5::jsonb, '{}'::jsonb),"
            "  discharged_at = NULL, updated_at = now()"
            " RETURNING patient_id, station, bed, thresholds, admitted_at",
            self.ward, patient, station, bed,
            orjson.dumps(thresholds).decode() if thresholds is not None else None,
            station is not None, bed is not None,
        )
        return _patient(row)

    async def open_alerts(self) -> list[Alert]:
        """Alerts not yet resolved, for a warm restart."""
        rows = await self.pool.fetch("SELECT doc FROM alerts WHERE ward = $1 AND state <> 'resolved'", self.ward)
        return [alert_from_json(orjson.loads(r["doc"])) for r in rows]

    async def alerts(self, *, patient: str | None, state: str | None, station: str | None,
                     limit: int = 1000) -> list[dict[str, Any]]:
        """Alerts newest first; ``state=open`` means not resolved; ``station`` scopes by the patients' station now."""
        where: list[str] = ["a.ward = $1"]
        args: list[object] = [self.ward]
        if patient is not None:
            args.append(patient)
            where.append(f"a.patient_id = ${len(args)}")
        if state == "open":
            where.append("a.state <> 'resolved'")
        elif state is not None:
            args.append(state)
            where.append(f"a.state = ${len(args)}")
        if station is not None:
            args.append(station)
            where.append(f"p.station = ${len(args)}")
        args.append(limit)
        rows = await self.pool.fetch(
            "SELECT a.doc FROM alerts a LEFT JOIN patients p ON p.ward = a.ward AND p.patient_id = a.patient_id"
            f" WHERE {' AND '.join(where)} ORDER BY a.raised_ts DESC, a.id LIMIT ${len(args)}", *args,
        )
        return [orjson.loads(r["doc"]) for r in rows]

    async def iter_readings(self, from_ms: int, to_ms: int, patient: str | None = None,
                            chunk: int = 10_000, *, waveforms: bool = True) -> AsyncIterator[list[Reading]]:
        """Stored readings of the ward in event-time order, in chunks (a server-side cursor)."""
        sql = ("SELECT patient_id, vital, ts, num, doc, wave, device, seq, received_at FROM readings"
               " WHERE ward = $1 AND ts >= $2 AND ts <= $3" + (" AND patient_id = $4" if patient else "")
               + ("" if waveforms else " AND wave IS NULL")
               + " ORDER BY ts, patient_id, vital, dedup")
        args: list[object] = [self.ward, from_ms, to_ms] + ([patient] if patient else [])
        async with self.pool.acquire() as conn, conn.transaction():
            cursor = await conn.cursor(sql, *args)
            while rows := await cursor.fetch(chunk):
                yield [self._reading(r) for r in rows]

    def _reading(self, r: asyncpg.Record) -> Reading:
        spec = self.registry.get(r["vital"])
        kind = spec.kind if spec is not None else ValueKind.NUMBER
        value: float | dict[str, float] | str | Waveform
        if kind is ValueKind.NUMBER:
            value = float(r["num"])
        elif kind is ValueKind.WAVEFORM:
            value = Waveform(float(orjson.loads(r["doc"])["hz"]), bytes(r["wave"]))
        else:
            value = orjson.loads(r["doc"])
        return Reading(PatientId(r["patient_id"]), r["vital"], r["ts"], value, r["device"], r["seq"],
                       r["received_at"])

    async def create_snapshot(self, patient: str, vitals: list[str], from_ms: int, to_ms: int,
                              requested_by: str) -> dict[str, Any]:
        """Build the Bundle from stored readings and put it in the outbox (same transaction)."""
        snapshot_id = str(uuid.uuid4())
        by_vital: dict[str, list[Reading]] = {v: [] for v in vitals}
        async for chunk in self.iter_readings(from_ms, to_ms, patient):
            for r in chunk:
                if r.vital in by_vital:
                    by_vital[r.vital].append(r)
        bundle = snapshot_bundle(snapshot_id, patient, by_vital, from_ms, to_ms)
        await self.pool.execute(
            "INSERT INTO snapshots (id, ward, patient_id, requested_by, from_ts, to_ts, bundle)"
            " VALUES ($1::uuid, $2, $3, $4, $5, $6, $7::jsonb)",
            snapshot_id, self.ward, patient, requested_by, from_ms, to_ms,
            orjson.dumps(bundle, option=orjson.OPT_SERIALIZE_NUMPY).decode())
        found = await self.snapshot(snapshot_id)
        assert found is not None
        return found

    async def snapshot(self, snapshot_id: str) -> dict[str, Any] | None:
        try:
            uuid.UUID(snapshot_id)
        except ValueError:
            return None
        row = await self.pool.fetchrow(
            "SELECT id::text AS id, patient_id, state, attempts, last_error, created_at, delivered_at,"
            " response_status, from_ts, to_ts, bundle FROM snapshots WHERE ward = $1 AND id = $2::uuid",
            self.ward, snapshot_id)
        return snapshot_state(row) if row is not None else None

    async def discharge(self, patient: str) -> bool:
        """Take a patient off the lists (readings stay for their 24 h); False if not admitted."""
        status: str = await self.pool.execute(
            "UPDATE patients SET discharged_at = now(), station = NULL, updated_at = now()"
            " WHERE ward = $1 AND patient_id = $2 AND discharged_at IS NULL", self.ward, patient,
        )
        return status.endswith(" 1")

    async def history(self, patient: str, vital: str, from_ms: int, to_ms: int,
                      max_points: int | None) -> list[dict[str, Any]]:
        """Readings of one vital in ``[from_ms, to_ms]``, oldest first, values as they came in."""
        spec = self.registry[vital]
        async with self.pool.acquire() as conn:
            if max_points is None:
                count = await conn.fetchval(
                    "SELECT count(*) FROM readings WHERE ward = $1 AND patient_id = $2"
                    " AND vital = $3 AND ts >= $4 AND ts <= $5", self.ward, patient, vital, from_ms, to_ms,
                )
                if count > MAX_READINGS:
                    raise TooManyReadings(count)
            rows = await conn.fetch(
                "SELECT ts, num, doc, wave FROM readings WHERE ward = $1 AND patient_id = $2"
                " AND vital = $3 AND ts >= $4 AND ts <= $5 ORDER BY ts, dedup",
                self.ward, patient, vital, from_ms, to_ms,
            )
        if max_points is not None and len(rows) > max_points:
            rows = _downsample(rows, spec.kind, spec.primary, max_points)
        return [{"ts": r["ts"], "value": _value(r, spec.kind)} for r in rows]


def _patient(r: asyncpg.Record) -> PatientRow:
    return PatientRow(r["patient_id"], r["station"], r["bed"], orjson.loads(r["thresholds"]), r["admitted_at"])


def _value(row: asyncpg.Record, kind: ValueKind) -> Any:
    if kind is ValueKind.NUMBER:
        return row["num"]
    doc = orjson.loads(row["doc"])
    if kind is ValueKind.WAVEFORM:
        # float32 array: orjson prints each sample in its shortest float32 form.
        return {"hz": doc["hz"], "samples": np.frombuffer(row["wave"], dtype="<f4")}
    return doc


def _downsample(rows: list[asyncpg.Record], kind: ValueKind, primary: str | None,
                max_points: int) -> list[asyncpg.Record]:
    if kind is ValueKind.ENUM:
        return [rows[i] for i in change_points([r["doc"] for r in rows], max_points)]
    ts = np.fromiter((r["ts"] for r in rows), dtype=np.int64, count=len(rows))
    if kind is ValueKind.NUMBER:
        values = np.fromiter((r["num"] for r in rows), dtype=np.float64, count=len(rows))
    elif kind is ValueKind.OBJECT:
        key = primary or ""
        values = np.fromiter((orjson.loads(r["doc"]).get(key, np.nan) for r in rows),
                             dtype=np.float64, count=len(rows))
    else:  # waveform: keep the chunks with the largest swing (QRS complexes, artefacts)
        values = np.fromiter((float(np.ptp(np.frombuffer(r["wave"], dtype="<f4"))) for r in rows),
                             dtype=np.float64, count=len(rows))
    return [rows[i] for i in minmax_indices(ts, values, max_points).tolist()]
