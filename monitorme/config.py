"""Frozen settings from a ward TOML file plus ``MONITORME_*`` environment variables (env wins)."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from monitorme.core.definitions import PipelineRegistry
from monitorme.core.ruleset import RuleSet
from monitorme.errors import ConfigError

_HOST_PORT = re.compile(r"^(?P<host>\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.-]+):(?P<port>\d{1,5})$")


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything ``monitorme run`` needs; names are ``section_key`` of the TOML file."""

    ward: str = "w1"
    mqtt_url: str = "mqtt://127.0.0.1:1883"
    mqtt_client_id: str = ""  # default: monitorme-{ward}
    mqtt_protocol: int = 5
    mqtt_qos: int = 1
    mqtt_receive_maximum: int = 20_000
    mqtt_session_expiry_s: int = 86_400
    mqtt_ca: str = ""
    mqtt_cert: str = ""  # client certificate (PEM) for mqtts:// brokers that require one
    mqtt_key: str = ""  # its private key (PEM); default: in the cert file
    database_url: str = "postgresql://postgres@127.0.0.1:5432/monitorme"
    database_batch_rows: int = 10_000
    database_flush_ms: int = 10
    database_retention_hours: int = 24
    database_partitions_ahead_hours: int = 3
    database_dead_letter_retention_hours: int = 168  # rejected input kept a week; 0 keeps it forever
    spool_dir: str = ""  # default: $STATE_DIRECTORY/spool (systemd) else ./.monitorme/spool; "off" disables
    spool_max_bytes: int = 1 << 30
    http_listen: str = "127.0.0.1:8080"
    http_tokens: str = ""
    http_auth_failures_per_minute: int = 20  # per client address; then 429 until the minute has passed
    ingest_max_future_s: int = 300
    ingest_max_payload_bytes: int = 65_536
    ingest_batch_max: int = 5_000
    analysis_lateness_s: int = 60
    analysis_restore_s: int = 180  # at start, replay this much stored history into windows and rule timers
    alarms_escalate_high_s: int = 60
    alarms_escalate_medium_s: int = 300
    alarms_remind_s: int = 120
    pipelines_dir: str = ""  # default: the pipelines shipped with the package
    rules_dir: str = ""
    mymedicaldata_url: str = ""
    mymedicaldata_token: str = ""
    mymedicaldata_ca: str = ""
    log_format: str = "auto"  # auto | json | console
    log_level: str = "INFO"

    @property
    def client_id(self) -> str:
        return self.mqtt_client_id or f"monitorme-{self.ward}"

    @property
    def spool_path(self) -> Path | None:
        """This ward's spool directory (None when the spool is off)."""
        if self.spool_dir == "off":
            return None
        base = Path(self.spool_dir) if self.spool_dir else (
            Path(os.environ["STATE_DIRECTORY"]) / "spool" if os.environ.get("STATE_DIRECTORY")
            else Path(".monitorme") / "spool")
        return base / self.ward

    @property
    def http_host_port(self) -> tuple[str, int]:
        return parse_listen(self.http_listen)


ENV_KEYS = {
    "MONITORME_WARD": "ward",
    "MONITORME_MQTT_URL": "mqtt_url",
    "MONITORME_DATABASE_URL": "database_url",
    "MONITORME_HTTP": "http_listen",
    "MONITORME_TOKENS": "http_tokens",
    "MONITORME_MYMEDICALDATA_URL": "mymedicaldata_url",
    "MONITORME_MYMEDICALDATA_TOKEN": "mymedicaldata_token",
    "MONITORME_MYMEDICALDATA_CA": "mymedicaldata_ca",
    "MONITORME_PIPELINES": "pipelines_dir",
    "MONITORME_RULES": "rules_dir",
    "MONITORME_LOG_FORMAT": "log_format",
    "MONITORME_SPOOL_DIR": "spool_dir",
    "MONITORME_MQTT_CA": "mqtt_ca",
    "MONITORME_MQTT_RECEIVE_MAXIMUM": "mqtt_receive_maximum",
    "MONITORME_MQTT_CERT": "mqtt_cert",
    "MONITORME_MQTT_KEY": "mqtt_key",
    "MONITORME_LOG_LEVEL": "log_level",
}
_TOP_LEVEL = {"ward"}


def parse_listen(text: str, key: str = "http.listen") -> tuple[str, int]:
    """``host:port`` -> (host, port).

    >>> parse_listen("127.0.0.1:8080")
    ('127.0.0.1', 8080)
    """
    match = _HOST_PORT.match(text)
    if not match or not 0 <= int(match["port"]) <= 65535:
        raise ConfigError(key, f"must be host:port, got {text!r}")
    return match["host"].strip("[]"), int(match["port"])


def _key_name(field: str) -> str:
    if field in _TOP_LEVEL:
        return field
    section, _, rest = field.partition("_")
    return f"{section}.{rest}"


def load_settings(path: str | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Read the TOML file (if any), then apply env vars; check every key and type.

    Raises:
        ConfigError: one line naming the key and the problem.
    """
    env = os.environ if env is None else env
    known = {f.name: f for f in fields(Settings)}
    values: dict[str, Any] = {}
    if path:
        try:
            doc = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError("--config", f"cannot read {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(path, f"not valid TOML: {exc}") from None
        for name, value in doc.items():
            if isinstance(value, dict):
                for sub, subvalue in value.items():
                    field = f"{name}_{sub}"
                    if field not in known or field in _TOP_LEVEL:
                        raise ConfigError(f"{name}.{sub}", f"unknown key in {path}")
                    values[field] = subvalue
            elif name in _TOP_LEVEL:
                values[name] = value
            else:
                raise ConfigError(name, f"unknown key in {path}")
    for var, field in ENV_KEYS.items():
        if var in env:
            values[field] = env[var]
        elif f"{var}_FILE" in env:  # Docker/Kubernetes/systemd-credentials style: the secret stays in a file
            secret = Path(env[f"{var}_FILE"])
            try:
                values[field] = secret.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(f"{var}_FILE", f"cannot read {secret}: {exc.strerror}") from None
    for field, value in list(values.items()):
        want = known[field].type
        key = _key_name(field)
        if want == "int":
            if isinstance(value, str):
                try:
                    value = int(value)
                except ValueError:
                    raise ConfigError(key, f"must be an integer, got {value!r}") from None
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(key, f"must be an integer, got {value!r}")
        elif not isinstance(value, str):
            raise ConfigError(key, f"must be a string, got {value!r}")
        values[field] = value
    settings = Settings(**values)
    _check(settings)
    return settings


def _check(s: Settings) -> None:
    from monitorme.adapters.mqtt_source import parse_mqtt_url
    from monitorme.core.decode import ID_PATTERN

    if not ID_PATTERN.match(s.ward):
        raise ConfigError("ward", f"must match {ID_PATTERN.pattern}, got {s.ward!r}")
    parse_mqtt_url(s.mqtt_url)
    if not re.match(r"^postgres(ql)?://", s.database_url):
        raise ConfigError("database.url", f"must be postgresql://..., got {s.database_url!r}")
    parse_listen(s.http_listen)
    if s.mqtt_protocol not in (4, 5):
        raise ConfigError("mqtt.protocol", "must be 5 (MQTT 5) or 4 (MQTT 3.1.1)")
    if s.mqtt_qos not in (0, 1):
        raise ConfigError("mqtt.qos", "must be 0 or 1")
    if not 1 <= s.mqtt_receive_maximum <= 65_535:
        raise ConfigError("mqtt.receive_maximum", "must be 1..65535")
    if not 1 <= s.database_flush_ms <= 100:
        raise ConfigError("database.flush_ms", "must be 1..100 (readings must be stored within 100 ms)")
    if s.database_batch_rows < 1:
        raise ConfigError("database.batch_rows", "must be positive")
    if not 0 <= s.analysis_restore_s <= 86_400:
        raise ConfigError("analysis.restore_s", "must be 0..86400")
    if s.http_auth_failures_per_minute < 1:
        raise ConfigError("http.auth_failures_per_minute", "must be at least 1")
    if s.spool_max_bytes < 1 << 20:
        raise ConfigError("spool.max_bytes", "must be at least 1 MiB")
    if s.database_retention_hours < 1:
        raise ConfigError("database.retention_hours", "must be at least 1")
    if s.database_dead_letter_retention_hours < 0:
        raise ConfigError("database.dead_letter_retention_hours", "must be 0 (keep forever) or more")
    if s.mymedicaldata_url and not s.mymedicaldata_url.startswith("https://"):
        raise ConfigError("mymedicaldata.url", "must be an https:// URL")
    if s.log_format not in ("auto", "json", "console"):
        raise ConfigError("log.format", "must be auto, json or console")
    for key, path in (("http.tokens", s.http_tokens), ("mqtt.ca", s.mqtt_ca), ("mqtt.cert", s.mqtt_cert),
                      ("mqtt.key", s.mqtt_key),
                      ("mymedicaldata.ca", s.mymedicaldata_ca), ("pipelines.dir", s.pipelines_dir),
                      ("rules.dir", s.rules_dir)):
        if path and not Path(path).exists():
            raise ConfigError(key, f"{path} does not exist")


def data_dir(name: str) -> Path:
    """A directory shipped with the package (``pipelines``, ``rules``, ``migrations``)."""
    packaged = Path(__file__).resolve().parent / "_data" / name
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / name


def load_pipelines(directory: str | Path | None = None) -> PipelineRegistry:
    """Read every ``*.toml`` in the pipelines directory into a registry.

    Raises:
        ConfigError: naming the file and key of the first problem.
    """
    root = Path(directory) if directory else data_dir("pipelines")
    files = sorted(root.glob("*.toml"))
    if not files:
        raise ConfigError("pipelines.dir", f"no *.toml files in {root}")
    return PipelineRegistry.from_texts({f"pipelines/{f.name}": f.read_text(encoding="utf-8") for f in files})


def load_rules(registry: PipelineRegistry, directory: str | Path | None = None) -> RuleSet:
    """Read every ``*.toml`` in the rules directory, checked against the pipelines.

    Raises:
        ConfigError: naming the file, the rule and the problem.
    """
    root = Path(directory) if directory else data_dir("rules")
    texts = {f"rules/{f.name}": f.read_text(encoding="utf-8") for f in sorted(root.glob("*.toml"))}
    return RuleSet.from_texts(texts, registry)
