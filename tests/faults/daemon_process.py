"""``monitorme run`` as a real child process, so a test can ``kill -9`` it and start it again."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


class DaemonProcess:
    """One daemon process with a JSON log read in a thread; ``events`` keeps every record."""

    def __init__(self, env: dict[str, str], *, insecure: bool = True) -> None:
        base = {k: v for k, v in os.environ.items() if not k.startswith("MONITORME_")}
        base.update(MONITORME_LOG_FORMAT="json", PYTHONUNBUFFERED="1")
        base.update(env)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "monitorme", "run", *(["--insecure-no-auth"] if insecure else [])],
            cwd=REPO, env=base, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, encoding="utf-8", errors="replace", bufsize=1,
        )
        self._events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.records: list[dict[str, Any]] = []
        self.tail: deque[str] = deque(maxlen=60)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout:
            self._read_lines()

    def _read_lines(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.tail.append(line.rstrip())
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if isinstance(doc, dict):
                self.records.append(doc)
                self._events.put(doc)

    def wait_event(self, name: str, timeout_s: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                doc = self._events.get(timeout=0.1)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            if doc.get("event") == name:
                return doc
        raise AssertionError(f"no {name} from the daemon; log tail:\n" + "\n".join(self.tail))

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout_s: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode
