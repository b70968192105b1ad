"""TLS to the broker: mqtts:// with the hospital's CA, and a client certificate where the broker asks.

A private Mosquitto with a second listener that speaks TLS only and requires a client
certificate (trustme makes the CA, the server's and the daemon's certificates). The daemon
subscribes over TLS; a reading published on the plain listener arrives, is stored and the
daemon stays connected. Without its client certificate, or trusting another CA, it never gets in.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from monitorme.demo.services import MosquittoBroker, free_port
from monitorme.sim.publisher import publish
from tests.integration.daemon_harness import make_settings, running
from tests.integration.daemon_harness import reading as msg

trustme = pytest.importorskip("trustme")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.asyncio,
    pytest.mark.skipif(not MosquittoBroker.available(), reason="needs mosquitto to run a private broker"),
]


def certificates(tmp_path: Path) -> dict[str, Path]:
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    client = ca.issue_cert("monitorme-daemon")
    paths = {name: tmp_path / f"{name}.pem" for name in ("ca", "server_cert", "server_key", "client", "other_ca")}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    server.cert_chain_pems[0].write_to_path(str(paths["server_cert"]))
    server.private_key_pem.write_to_path(str(paths["server_key"]))
    client.private_key_and_cert_chain_pem.write_to_path(str(paths["client"]))
    trustme.CA().cert_pem.write_to_path(str(paths["other_ca"]))
    return paths


async def test_mqtts_with_a_client_certificate(tmp_path: Path, ward: str, pg_dsn: str) -> None:
    pem = certificates(tmp_path)
    tls_port = free_port()
    tls_listener = [f"listener {tls_port} 127.0.0.1", f"cafile {pem['ca']}", f"certfile {pem['server_cert']}",
                    f"keyfile {pem['server_key']}", "require_certificate true"]
    with MosquittoBroker(extra_config=tls_listener) as broker:
        url = f"mqtts://localhost:{tls_port}"
        settings = make_settings(tmp_path, ward=ward, mqtt_url=url, dsn=pg_dsn, protocol=5,
                                 mqtt_ca=str(pem["ca"]), mqtt_cert=str(pem["client"]))
        now = int(time.time() * 1000)
        async with running(settings) as daemon:
            await asyncio.to_thread(publish, [msg(ward, "p1", "heart_rate", now, 72.0)], broker.url)
            for _ in range(100):
                if daemon.metrics.total("monitorme_stored_total") >= 1:
                    break
                await asyncio.sleep(0.05)
            stored = daemon.metrics.total("monitorme_stored_total")

        # without its client certificate, or trusting another CA, the daemon never gets in
        for ca, cert in ((pem["ca"], ""), (pem["other_ca"], pem["client"])):
            refused = make_settings(tmp_path, ward=ward, mqtt_url=url, dsn=pg_dsn, protocol=5,
                                    mqtt_ca=str(ca), mqtt_cert=str(cert))
            with pytest.raises(AssertionError, match="did not connect"):
                async with running(refused):
                    pass
    assert stored == 1
