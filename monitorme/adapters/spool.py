"""A bounded, disk-backed write-ahead spool for batches PostgreSQL cannot take right now.

When the database is away, the writer appends each batch here, fsyncs, and only then lets the
MQTT messages behind it be acknowledged: the spool is as durable as a commit for our purpose
(CONTRACT: acknowledge once durable). When the database answers again the batches are written
in the order they were spooled, oldest first, and removed one by one after each commit; a
restart replays what is left. Readings are stored with ON CONFLICT DO NOTHING, so a batch that
was committed just before a crash and replayed again is harmless.

Format: one file per batch, ``{sequence:012d}.batch``, holding the batch as JSON (bytes as
base64), written to a temporary name, fsynced and renamed, so a file is either whole or absent.
The size bound counts those files' bytes; what happens beyond it is the writer's policy.

One process at a time owns a spool: ``Spool`` takes an exclusive ``flock`` on ``{dir}.lock``
beside the directory and holds it until ``close()`` (the kernel drops it when the process
dies), so a standby on the same host never replays or cleans up the active daemon's files.
"""

from __future__ import annotations

import base64
import fcntl
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from monitorme.core.alerts import Alert, alert_from_json
from monitorme.core.model import AuditEntry, PatientId, Reading, Rejection, Waveform


@dataclass(slots=True)
class SpooledBatch:
    """What one writer batch holds, minus its MQTT acknowledgements (those are done)."""

    readings: list[Reading] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    admitted: list[str] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    audit: list[AuditEntry] = field(default_factory=list)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _value(v: float | dict[str, float] | str | Waveform) -> Any:
    if isinstance(v, Waveform):
        return {"hz": v.hz, "f32": _b64(v.samples)}
    return v


def _unvalue(v: Any) -> float | dict[str, float] | str | Waveform:
    if isinstance(v, dict) and "f32" in v:
        return Waveform(float(v["hz"]), base64.b64decode(v["f32"]))
    if isinstance(v, int | float):
        return float(v)
    return v  # type: ignore[no-any-return]


def encode(batch: SpooledBatch) -> bytes:
    return orjson.dumps({
        "readings": [[r.patient, r.vital, r.ts_ms, _value(r.value), r.device, r.seq, r.received_ms]
                     for r in batch.readings],
        "rejections": [[j.topic, j.reason, j.detail, _b64(j.payload), j.payload_size, j.received_ms]
                       for j in batch.rejections],
        "admitted": batch.admitted,
        "alerts": [a.as_json() for a in batch.alerts],
        "audit": [[e.at_ms, e.actor, e.role, e.action, e.patient, e.alert_id, e.detail] for e in batch.audit],
    })


def decode(data: bytes) -> SpooledBatch:
    doc = orjson.loads(data)
    return SpooledBatch(
        readings=[Reading(PatientId(p), v, int(ts), _unvalue(val), dev, seq, int(rx))
                  for p, v, ts, val, dev, seq, rx in doc["readings"]],
        rejections=[Rejection(t, r, d, base64.b64decode(pl), int(n), int(rx))
                    for t, r, d, pl, n, rx in doc["rejections"]],
        admitted=list(doc["admitted"]),
        alerts=[alert_from_json(a) for a in doc["alerts"]],
        audit=[AuditEntry(int(at), actor, role, action, patient, alert_id, detail)
               for at, actor, role, action, patient, alert_id, detail in doc["audit"]],
    )


class SpoolBusy(RuntimeError):
    """Another process owns this spool directory."""


class Spool:
    """The spool directory of one ward, owned while open. Blocking file I/O: call it from a worker thread.

    Args:
        directory: the ward's spool directory (created if missing).
        max_bytes: the size bound for ``has_room``.
        wait_s: how long to wait for another process to give the spool up before ``SpoolBusy``.
    """

    def __init__(self, directory: Path, max_bytes: int, *, wait_s: float = 0.0) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd: int | None = _lock(directory.parent / f"{directory.name}.lock", wait_s)
        for stale in directory.glob("*.tmp"):  # a write cut short by a crash: never acknowledged
            stale.unlink()
        files = self._files()
        self._next = int(files[-1].stem) + 1 if files else 1
        self.bytes = sum(f.stat().st_size for f in files)
        self.batches = len(files)

    def _files(self) -> list[Path]:
        return sorted(self.directory.glob("*.batch"))

    def has_room(self, size: int) -> bool:
        return self.bytes + size <= self.max_bytes

    def append(self, data: bytes) -> None:
        """Write one encoded batch durably (file and directory fsynced) before returning."""
        path = self.directory / f"{self._next:012d}.batch"
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self._next += 1
        self.bytes += len(data)
        self.batches += 1

    def oldest(self) -> Iterator[tuple[Path, bytes]]:
        """Spooled batches, oldest first (a snapshot of the directory)."""
        for path in self._files():
            yield path, path.read_bytes()

    def remove(self, path: Path, size: int) -> None:
        path.unlink(missing_ok=True)
        self.bytes = max(0, self.bytes - size)
        self.batches = max(0, self.batches - 1)

    def close(self) -> None:
        """Give the spool up (its files stay for the next owner)."""
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the flock

    def quarantine(self, path: Path, size: int) -> Path:
        """Set aside a batch the database refuses outright, for a person to look at."""
        target = self.directory / "quarantine" / path.name
        target.parent.mkdir(exist_ok=True)
        os.replace(path, target)
        self.bytes = max(0, self.bytes - size)
        self.batches = max(0, self.batches - 1)
        return target


def _lock(path: Path, wait_s: float) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise SpoolBusy(f"{path} is held by another process") from None
            time.sleep(0.05)
