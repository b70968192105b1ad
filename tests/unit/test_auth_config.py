"""Token file and settings: roles, scopes, constant-time lookup; config errors name the key."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from monitorme.config import load_settings
from monitorme.errors import ConfigError
from monitorme.metrics import Metrics
from monitorme.web.auth import Role, TokenBook

CLINICIAN_SHA = hashlib.sha256(b"clinician-secret").hexdigest()
TOKENS = f"""
[[token]]
token = "s1-secret"
role = "station"
station = "s1"

[[token]]
sha256 = "{CLINICIAN_SHA}"
role = "clinician"

[[token]]
token = "admin-secret"
role = "admin"
"""


def test_tokens_map_to_roles_and_stations() -> None:
    book = TokenBook.from_toml(TOKENS)
    station = book.lookup("s1-secret")
    assert station is not None and station.role is Role.STATION and station.station == "s1"
    assert station.may_see_station("s1") and not station.may_see_station("s2")
    assert not station.may_see_station(None)  # unassigned patients are for clinicians only
    clinician = book.lookup("clinician-secret")
    assert clinician is not None and clinician.role is Role.CLINICIAN and clinician.may_see_station("s9")
    assert book.lookup("admin-secret").role is Role.ADMIN  # type: ignore[union-attr]
    assert book.lookup("s1-secre") is None and book.lookup("") is None


@pytest.mark.parametrize(("text", "key"), [
    ('[[token]]\ntoken = "abcdefgh"\nrole = "station"', "station"),
    ('[[token]]\ntoken = "abcdefgh"\nrole = "nurse"', "role"),
    ('[[token]]\ntoken = "short"\nrole = "admin"', "token"),
    ('[[token]]\nsha256 = "xyz"\nrole = "admin"', "sha256"),
    ('[[token]]\ntoken = "abcdefgh"\nsha256 = "00"\nrole = "admin"', "token[1]"),
    ('[[tokens]]\ntoken = "abcdefgh"', "tokens"),
])
def test_bad_token_files_name_the_key(text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        TokenBook.from_toml(text, "tokens.toml")
    assert key in str(info.value)


def test_env_wins_over_the_file(tmp_path: Path) -> None:
    cfg = tmp_path / "ward.toml"
    cfg.write_text('ward = "w7"\n[mqtt]\nurl = "mqtt://broker:1883"\n[database]\nflush_ms = 20\n')
    s = load_settings(str(cfg), env={"MONITORME_MQTT_URL": "mqtts://user:pw@other:8883"})
    assert (s.ward, s.mqtt_url) == ("w7", "mqtts://user:pw@other:8883")
    assert (s.database_flush_ms, s.client_id) == (20, "monitorme-w7")


@pytest.mark.parametrize(("toml", "env", "key"), [
    ('[mqtt]\nurll = "x"', {}, "mqtt.urll"),
    ("speed = 3", {}, "speed"),
    ('[database]\nflush_ms = "soon"', {}, "database.flush_ms"),
    ("[database]\nflush_ms = 500", {}, "database.flush_ms"),
    ("", {"MONITORME_MQTT_URL": "http://x"}, "mqtt.url"),
    ("", {"MONITORME_DATABASE_URL": "mysql://x"}, "database.url"),
    ("", {"MONITORME_HTTP": "8080"}, "http.listen"),
    ("", {"MONITORME_WARD": "w 1"}, "ward"),
    ("", {"MONITORME_TOKENS": "/nonexistent/tokens.toml"}, "http.tokens"),
    ("", {"MONITORME_MYMEDICALDATA_URL": "http://records"}, "mymedicaldata.url"),
])
def test_bad_config_names_the_key(tmp_path: Path, toml: str, env: dict[str, str], key: str) -> None:
    cfg = tmp_path / "ward.toml"
    cfg.write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_settings(str(cfg), env=env)
    assert key in str(info.value)


def test_metrics_render_prometheus_text() -> None:
    m = Metrics()
    m.describe("monitorme_rejected_total", "counter", "Inputs rejected, by reason.")
    m.inc("monitorme_rejected_total", reason="not_json")
    m.inc("monitorme_rejected_total", 2, reason='we"ird')
    m.gauge("monitorme_buffered", lambda: 7)
    text = m.render()
    assert "# TYPE monitorme_rejected_total counter" in text
    assert 'monitorme_rejected_total{reason="not_json"} 1' in text
    assert 'monitorme_rejected_total{reason="we\\"ird"} 2' in text
    assert "monitorme_buffered 7" in text
    assert m.total("monitorme_rejected_total") == 3


def test_histogram_buckets_render_cumulatively_and_interpolate_quantiles() -> None:
    import numpy as np

    m = Metrics()
    h = m.histogram("monitorme_store_lag_seconds", [0.01, 0.02, 0.05])
    h.observe_many(np.array([0.004, 0.01, 0.015, 0.018, 0.03, 7.0]))
    text = m.render()
    assert 'monitorme_store_lag_seconds_bucket{le="0.01"} 2' in text  # le is inclusive
    assert 'monitorme_store_lag_seconds_bucket{le="0.02"} 4' in text
    assert 'monitorme_store_lag_seconds_bucket{le="0.05"} 5' in text
    assert 'monitorme_store_lag_seconds_bucket{le="+Inf"} 6' in text
    assert "monitorme_store_lag_seconds_count 6" in text
    assert h.quantile(0.5) == 0.015  # rank 3 of 6: half-way through the (0.01, 0.02] bucket
    assert h.quantile(1.0) == 0.05  # beyond the last bound all we know is "more than 0.05"


def test_secrets_can_come_from_files_and_env_still_wins(tmp_path: Path) -> None:
    from monitorme.config import load_settings

    secret = tmp_path / "db-url"
    secret.write_text("postgresql://monitorme:s3cret@db/monitorme\n")
    s = load_settings(None, {"MONITORME_DATABASE_URL_FILE": str(secret)})
    assert s.database_url == "postgresql://monitorme:s3cret@db/monitorme"  # trailing newline stripped
    s = load_settings(None, {"MONITORME_DATABASE_URL_FILE": str(secret),
                             "MONITORME_DATABASE_URL": "postgresql://other@db/x"})
    assert s.database_url == "postgresql://other@db/x"
    with pytest.raises(ConfigError, match="MONITORME_MYMEDICALDATA_TOKEN_FILE"):
        load_settings(None, {"MONITORME_MYMEDICALDATA_TOKEN_FILE": str(tmp_path / "missing")})


def test_failed_auth_limiter_counts_per_address_within_the_window() -> None:
    from monitorme.web.app import FailedAuthLimiter

    now = [1000.0]
    limiter = FailedAuthLimiter(limit=3, window_s=60, max_clients=2, clock=lambda: now[0])
    for _ in range(3):
        assert limiter.retry_after("10.0.0.1") == 0
        limiter.failed("10.0.0.1")
    assert limiter.retry_after("10.0.0.1") == 60  # limited until the oldest failure leaves the window
    assert limiter.retry_after("10.0.0.2") == 0  # another address is not
    now[0] += 30
    assert limiter.retry_after("10.0.0.1") == 30
    now[0] += 30.5
    assert limiter.retry_after("10.0.0.1") == 0
    limiter.failed("a")
    limiter.failed("b")
    limiter.failed("c")  # a flood of addresses: memory stays bounded
    assert len(limiter._failures) <= 2


def test_the_writer_treats_anything_but_a_refused_statement_as_the_link() -> None:
    import asyncpg

    from monitorme.adapters.pg_writer import _link_failure

    assert _link_failure(asyncpg.InternalClientError("cannot switch to state 15"))  # seen in a 60 s outage
    assert _link_failure(ConnectionResetError()) and _link_failure(RuntimeError("unforeseen"))
    assert not _link_failure(asyncpg.UniqueViolationError("x"))  # the data: isolate the row, do not spool
    assert _link_failure(asyncpg.AdminShutdownError("x"))  # a PostgresError that is the link after all
