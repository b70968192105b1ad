"""The one exception hierarchy of MonitorMe.

::

    MonitorMeError
    +-- ConfigError               bad key in TOML/env, pipeline or rule file: one line, exit 2
    +-- InputError (ValueError)   one bad reading: rejected, counted by .reason, dead-lettered
    |   +-- DecodeError           not JSON, wrong shape or type, NaN/Infinity
    |   +-- ValidationError       unknown vital, impossible value, ts too far in the future/past
    +-- AdapterError              I/O failure, translated at the edge with ``raise ... from exc``
        +-- BrokerError
        +-- StoreError
        +-- UploadError
"""

from __future__ import annotations

_MAX_QUOTE = 80


def quote(value: object) -> str:
    """Return a short, printable quotation of an offending value for messages."""
    text = repr(value)
    if len(text) > _MAX_QUOTE:
        text = text[: _MAX_QUOTE - 3] + "..."
    return text


class MonitorMeError(Exception):
    """Base of every error MonitorMe raises on purpose."""


class ConfigError(MonitorMeError):
    """A configuration, pipeline or rule file is wrong; the daemon must not start.

    Args:
        key: the offending key, e.g. ``mqtt.url`` or ``pipelines/spo2.toml: range``.
        problem: what is wrong with it, one sentence.
    """

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(key, problem)
        self.key = key
        self.problem = problem

    def __str__(self) -> str:
        return f"config error: {self.key}: {self.problem}"


class InputError(MonitorMeError, ValueError):
    """One reading cannot be accepted.

    Args:
        reason: stable snake_case slug, the metric label (e.g. ``out_of_range``).
        detail: one sentence quoting the offending value.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


class DecodeError(InputError):
    """The payload is not a JSON object of the expected shape and types."""


class ValidationError(InputError):
    """The payload is well-formed but not acceptable (vital, range, time)."""


class AdapterError(MonitorMeError):
    """An I/O failure at the edge of the system."""


class BrokerError(AdapterError):
    """The MQTT broker could not be reached or refused us."""


class StoreError(AdapterError):
    """PostgreSQL could not be reached or refused a statement."""


class UploadError(AdapterError):
    """An upload to MyMedicalData failed."""
