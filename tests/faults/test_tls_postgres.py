"""TLS to PostgreSQL: ``sslmode=verify-full`` against the hospital's CA, with a client certificate.

Its own PostgreSQL (the system's server binaries, which are built with OpenSSL; the embedded
pgserver wheel is not) on a free port, where ``pg_hba.conf`` admits only TLS connections that
present a certificate for the user (``hostssl ... cert``) and rejects everything else. trustme
makes the CA, the server's certificate (localhost, 127.0.0.1) and the daemon's (CN postgres).

The daemon migrates, leases the ward, stores and reads back over TLS, and every connection it
holds is encrypted (``pg_stat_ssl``). Without TLS, trusting another CA, or without its client
certificate it stops at start with ``database.url`` named, and the reason, never a secret.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from monitorme.demo.services import free_port, port_open
from monitorme.errors import ConfigError
from monitorme.runtime.app import Daemon
from monitorme.sim.publisher import publish
from tests.integration.daemon_harness import make_settings, running, wait_for_count
from tests.integration.daemon_harness import reading as msg

trustme = pytest.importorskip("trustme")


def _server_bin() -> Path | None:
    """The newest system PostgreSQL bin directory (Debian's layout), if any."""
    dirs = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda d: int(d.parent.name), reverse=True)
    return next((d for d in dirs if (d / "postgres").exists() and (d / "initdb").exists()), None)


def _server_user() -> pwd.struct_passwd | None:
    """PostgreSQL refuses to run as root: as root use the system's ``postgres`` account."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid())
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        return None


BIN, USER = _server_bin(), _server_user()
pytestmark = [
    pytest.mark.integration,
    pytest.mark.asyncio,
    pytest.mark.skipif(BIN is None or USER is None,
                       reason="needs the system PostgreSQL server binaries (built with OpenSSL) and a non-root user"),
]


class TlsPostgres:
    """A throwaway PostgreSQL cluster on 127.0.0.1 that speaks TLS only and wants client certificates."""

    def __init__(self, pem: dict[str, Path]) -> None:
        assert BIN is not None and USER is not None
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="monitorme-tlspg-"))  # not tmp_path: the server user must reach it
        data = self.dir / "data"
        for name in ("server_cert", "server_key", "ca"):
            shutil.copy(pem[name], self.dir / f"{name}.pem")
        (self.dir / "server_key.pem").chmod(0o600)  # the server refuses a key others can read
        for path in (self.dir, *self.dir.iterdir()):
            os.chown(path, USER.pw_uid, USER.pw_gid)
        self._as_server_user([str(BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"])
        with (data / "postgresql.conf").open("a") as conf:
            conf.write(f"listen_addresses = '127.0.0.1'\nport = {self.port}\nunix_socket_directories = '{self.dir}'\n"
                       f"ssl = on\nssl_cert_file = '{self.dir}/server_cert.pem'\n"
                       f"ssl_key_file = '{self.dir}/server_key.pem'\nssl_ca_file = '{self.dir}/ca.pem'\n"
                       "fsync = off\n")
        (data / "pg_hba.conf").write_text("hostssl all all 127.0.0.1/32 cert\nhostnossl all all 0.0.0.0/0 reject\n")
        log = self.dir / "server.log"
        with log.open("wb") as out:
            self.proc = subprocess.Popen([str(BIN / "postgres"), "-D", str(data)], user=USER.pw_uid,
                                         group=USER.pw_gid, stdout=out, stderr=subprocess.STDOUT, cwd=self.dir)
        deadline = time.monotonic() + 30
        while not port_open("127.0.0.1", self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                err = log.read_text(errors="replace")
                self.stop()
                raise RuntimeError(f"TLS PostgreSQL did not start: {err}")
            time.sleep(0.1)

    def _as_server_user(self, argv: list[str]) -> None:
        assert USER is not None
        subprocess.run(argv, user=USER.pw_uid, group=USER.pw_gid, cwd=self.dir, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def certificates(tmp_path: Path) -> dict[str, Path]:
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    client = ca.issue_cert("monitorme-daemon", common_name="postgres")  # cert auth maps the CN to the user
    pem = {name: tmp_path / f"{name}.pem" for name in
           ("ca", "server_cert", "server_key", "client_cert", "client_key", "other_ca")}
    ca.cert_pem.write_to_path(str(pem["ca"]))
    server.cert_chain_pems[0].write_to_path(str(pem["server_cert"]))
    server.private_key_pem.write_to_path(str(pem["server_key"]))
    client.cert_chain_pems[0].write_to_path(str(pem["client_cert"]))
    client.private_key_pem.write_to_path(str(pem["client_key"]))
    pem["client_key"].chmod(0o600)
    trustme.CA().cert_pem.write_to_path(str(pem["other_ca"]))
    return pem


def dsn(port: int, **params: Any) -> str:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return f"postgresql://postgres@localhost:{port}/postgres?{query}"


@pytest.fixture
def tls_pg(tmp_path: Path) -> Iterator[tuple[TlsPostgres, dict[str, Path]]]:
    pem = certificates(tmp_path)
    server = TlsPostgres(pem)
    try:
        yield server, pem
    finally:
        server.stop()


async def test_daemon_stores_over_verified_tls_with_a_client_certificate(
    tmp_path: Path, ward: str, mqtt_url: str, tls_pg: tuple[TlsPostgres, dict[str, Path]]
) -> None:
    server, pem = tls_pg
    url = dsn(server.port, sslmode="verify-full", sslrootcert=pem["ca"], sslcert=pem["client_cert"],
              sslkey=pem["client_key"])
    settings = make_settings(tmp_path, ward=ward, mqtt_url=mqtt_url, dsn=url, protocol=5)
    now = int(time.time() * 1000)
    sent = [msg(ward, f"p{i % 5}", "heart_rate", now + 500 * i, 70.0 + i % 9) for i in range(200)]
    async with running(settings) as daemon:
        await asyncio.to_thread(publish, sent, mqtt_url)
        stored = await wait_for_count(url, f"SELECT count(*) FROM readings WHERE ward = '{ward}'", len(sent), 20)
        conn = await asyncpg.connect(url)
        try:
            encrypted, total = await conn.fetchrow(
                "SELECT count(*) FILTER (WHERE s.ssl AND s.client_dn LIKE '%CN=postgres'), count(*) "
                "FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) "
                "WHERE a.backend_type = 'client backend' AND a.pid <> pg_backend_pid()")
        finally:
            await conn.close()
        assert daemon.metrics.total("monitorme_stored_total") == len(sent)
    assert stored == len(sent)
    assert total >= 2  # the pool, the writer and the ward lease all hold connections
    assert encrypted == total


@pytest.mark.parametrize(("case", "reason"), [
    ("without TLS", "pg_hba.conf rejects"),
    ("trusting another CA", "certificate verify failed"),
    ("without a client certificate", "certificate"),
])
async def test_daemon_stops_at_start_when_the_database_link_is_not_trusted(
    tmp_path: Path, ward: str, mqtt_url: str, tls_pg: tuple[TlsPostgres, dict[str, Path]], case: str, reason: str
) -> None:
    server, pem = tls_pg
    url = {
        "without TLS": dsn(server.port, sslmode="disable"),
        "trusting another CA": dsn(server.port, sslmode="verify-full", sslrootcert=pem["other_ca"],
                                   sslcert=pem["client_cert"], sslkey=pem["client_key"]),
        "without a client certificate": dsn(server.port, sslmode="verify-full", sslrootcert=pem["ca"]),
    }[case]
    settings = make_settings(tmp_path, ward=ward, mqtt_url=mqtt_url, dsn=url, protocol=5)
    with pytest.raises(ConfigError) as err:
        async with Daemon(settings):
            pass
    assert err.value.key == "database.url"
    assert reason in str(err.value)
