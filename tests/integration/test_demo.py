"""`monitorme demo` starts everything, serves readings and tokens, and stops without leftovers."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from monitorme.demo.services import MosquittoBroker, free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 60.0
READINGS_TIMEOUT_S = 30.0
EXIT_TIMEOUT_S = 30.0
_STATION_URL = re.compile(r"(http://[^\s/]+/stations/(s\d+)\?token=([^\s&]+))")
_CLINICIAN = re.compile(r"clinician token: (\S+)")
_ADMIN = re.compile(r"admin token: (\S+)")


def _service_processes(marker: Path) -> dict[int, str]:
    """Live postgres/mosquitto processes whose command line mentions ``marker``: pid -> cmdline."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        name = cmdline.split(" ", 1)[0].rsplit("/", 1)[-1]
        if name in ("postgres", "mosquitto") and str(marker) in cmdline:
            found[int(entry.name)] = cmdline.strip()
    return found


def _get(url: str, token: str) -> tuple[int, Any]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode(errors="replace")


class _Lines:
    """Collects a process's stdout lines in a thread so reads can time out."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line)
        self._queue.put(None)

    def read_until(self, marker: str, timeout_s: float) -> str:
        """Return all output up to and including the first line containing ``marker``."""
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {marker!r} within {timeout_s} s")
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise EOFError(f"demo exited ({self.proc.poll()}) before printing {marker!r}")
            self.seen.append(line)
            if marker in line:
                return "".join(self.seen)

    def join(self) -> None:
        self._thread.join(5)


def test_demo_serves_a_ward_and_stops_cleanly(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    tmp_dir = tmp_path / "tmp"  # the demo's own temp dirs (mosquitto's config) land here too
    tmp_dir.mkdir()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONITORME_")}
    env.update(
        MONITORME_HTTP=f"127.0.0.1:{port}",
        TMPDIR=str(tmp_dir),
        PYTHONUNBUFFERED="1",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
    )
    stderr_path = tmp_path / "demo.stderr"
    command = [sys.executable, "-m", "monitorme", "demo", "--patients", "4", "--stations", "2",
               "--speed", "5", "--data-dir", str(data_dir)]
    with stderr_path.open("w") as stderr:
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=stderr, text=True)
    lines = _Lines(proc)
    try:
        try:
            output = lines.read_until("Press Ctrl-C to stop", STARTUP_TIMEOUT_S)
        except (TimeoutError, EOFError) as exc:
            pytest.fail(f"{exc}\nstdout:\n{''.join(lines.seen)}\nstderr:\n{stderr_path.read_text()}")

        stations = {m[1]: m[0] for m in _STATION_URL.findall(output)}
        assert sorted(stations) == ["s1", "s2"], output
        assert all(url.startswith(f"{base}/stations/") for url in stations.values()), output
        clinician, admin = _CLINICIAN.search(output), _ADMIN.search(output)
        assert clinician is not None and admin is not None, output
        token = clinician[1]

        running = _service_processes(tmp_path)
        assert any("postgres" in cmd and str(data_dir) in cmd for cmd in running.values()), running
        if MosquittoBroker.available():
            assert any("mosquitto" in cmd for cmd in running.values()), running

        history_url = f"{base}/api/patients/p001/history?vital=heart_rate"
        deadline = time.monotonic() + READINGS_TIMEOUT_S
        while True:
            status, body = _get(history_url, token)
            if status == 200 and body["readings"]:
                break
            assert time.monotonic() < deadline, f"no readings in {READINGS_TIMEOUT_S} s: {body}"
            time.sleep(0.25)
        assert all({"ts", "value"} <= set(r) for r in body["readings"])

        status, body = _get(f"{base}/api/patients", token)
        assert status == 200, body
        placed = {p["patient"]: p["station"] for p in body["patients"]}
        assert placed == {"p001": "s1", "p002": "s2", "p003": "s1", "p004": "s2"}

        # Each printed station token sees its own station's patients only.
        s2_token = _STATION_URL.search(stations["s2"])
        assert s2_token is not None
        status, body = _get(f"{base}/api/patients", s2_token[3])
        assert status == 200, body
        assert sorted(p["patient"] for p in body["patients"]) == ["p002", "p004"]

        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"demo still running {EXIT_TIMEOUT_S} s after SIGINT:\n"
                        f"{stderr_path.read_text()}")
        assert code == 0, stderr_path.read_text()
        assert _service_processes(tmp_path) == {}
        assert (data_dir / "pgdata" / "PG_VERSION").exists()  # --data-dir keeps the database
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in _service_processes(tmp_path):  # only what this test's demo left behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        lines.join()
        if proc.stdout is not None:
            proc.stdout.close()
