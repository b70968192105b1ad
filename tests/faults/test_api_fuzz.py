"""The HTTP API fuzzed from its own OpenAPI document (schemathesis): no 5xx, replies as documented.

The daemon runs as a real process with real tokens against its own database and a private
broker. schemathesis generates valid and invalid requests for every operation in
``/api/openapi.json`` as the admin; any server error, or a reply that contradicts the document
(status code, content type, body schema), fails the test. Afterwards the daemon must still be
alive and ready. ``API_FUZZ_EXAMPLES`` sets the examples per operation (CI: 25; by hand: 500+).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest

from monitorme.demo.services import MosquittoBroker, free_port
from tests.faults.daemon_process import DaemonProcess
from tests.integration.daemon_harness import TOKENS

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not MosquittoBroker.available(), reason="needs mosquitto to run a private broker"),
    pytest.mark.skipif(shutil.which("st") is None and shutil.which("schemathesis") is None,
                       reason="schemathesis not installed (it is in the dev extra)"),
]


def test_every_operation_fuzzed_without_a_server_error(tmp_path: Path, ward: str, pg_dsn: str) -> None:
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(TOKENS)
    port = free_port()
    with MosquittoBroker() as broker:
        daemon = DaemonProcess({"MONITORME_MQTT_URL": broker.url, "MONITORME_DATABASE_URL": pg_dsn,
                                "MONITORME_WARD": ward, "MONITORME_HTTP": f"127.0.0.1:{port}",
                                "MONITORME_TOKENS": str(tokens), "MONITORME_SPOOL_DIR": str(tmp_path / "spool"),
                                # uploads are queued (and retried in the background) against nothing
                                "MONITORME_MYMEDICALDATA_URL": "https://127.0.0.1:9/fhir"},
                               insecure=False)
        daemon.wait_event("mqtt_connected")
        url = f"http://127.0.0.1:{port}"
        cli = shutil.which("st") or shutil.which("schemathesis") or "st"
        examples = os.environ.get("API_FUZZ_EXAMPLES", "25")
        done = subprocess.run(
            [cli, "run", f"{url}/api/openapi.json", "--url", url, "-H", "Authorization: Bearer admin-token-1",
             # every check but positive_data_acceptance: thresholds and time ranges have rules (a known
             # rule name, a delay >= 0, from < to) that the document describes in words, not in schema
             "--checks", "all", "--exclude-checks", "positive_data_acceptance",
             "--max-examples", examples, "--workers", "1", "--seed", "1"],
            capture_output=True, text=True, timeout=600, cwd=tmp_path,  # its report dir goes there
        )
        print("\n".join(done.stdout.strip().splitlines()[-12:]))  # schemathesis' summary, seen with -s
        with urllib.request.urlopen(f"{url}/readyz", timeout=5) as r:
            still_ready = r.status == 200
        alive = daemon.proc.poll() is None
        errors = [rec for rec in daemon.records if rec.get("level") in ("error", "critical")]
        assert daemon.stop() == 0
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert alive and still_ready
    assert not errors, [e.get("exc", e)[-600:] for e in errors[:3]]
