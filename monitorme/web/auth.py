"""API tokens: the token file -> principals (station | clinician | admin), compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import tomllib
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from monitorme.errors import ConfigError


class Role(StrEnum):
    STATION = "station"
    CLINICIAN = "clinician"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a role, and for a station token the one station it may see."""

    role: Role
    station: str | None = None
    name: str = ""  # for the audit trail; never the token itself

    def may_see_station(self, station: str | None) -> bool:
        return self.role is not Role.STATION or (station is not None and station == self.station)


#: Used when ``--insecure-no-auth`` is given: everything is allowed.
NO_AUTH = Principal(Role.ADMIN, name="insecure-no-auth")


class TokenBook:
    """The configured tokens, kept only as SHA-256 digests.

    >>> book = TokenBook.from_toml('[[token]]\\ntoken = "s1-secret"\\nrole = "station"\\nstation = "s1"')
    >>> book.lookup("s1-secret")
    Principal(role=<Role.STATION: 'station'>, station='s1', name='station:s1#1')
    >>> book.lookup("guess") is None
    True
    """

    def __init__(self, entries: list[tuple[bytes, Principal]]) -> None:
        self._entries = entries

    @classmethod
    def from_toml(cls, text: str, source: str = "tokens") -> TokenBook:
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(source, f"not valid TOML: {exc}") from None
        unknown = set(doc) - {"token"}
        if unknown:
            raise ConfigError(f"{source}: {sorted(unknown)[0]}", "unknown key (expected [[token]] tables)")
        entries: list[tuple[bytes, Principal]] = []
        for i, item in enumerate(doc.get("token", []), start=1):
            where = f"{source}: token[{i}]"
            if not isinstance(item, dict) or set(item) - {"token", "sha256", "role", "station", "name"}:
                raise ConfigError(where, "keys are token or sha256, role, station, name")
            if ("token" in item) == ("sha256" in item):
                raise ConfigError(where, "give exactly one of token or sha256")
            if "token" in item:
                if not isinstance(item["token"], str) or len(item["token"]) < 8:
                    raise ConfigError(f"{where}.token", "must be a string of at least 8 characters")
                digest = hashlib.sha256(item["token"].encode()).digest()
            else:
                try:
                    digest = bytes.fromhex(str(item["sha256"]))
                except ValueError:
                    raise ConfigError(f"{where}.sha256", "must be 64 hex digits") from None
                if len(digest) != 32:
                    raise ConfigError(f"{where}.sha256", "must be 64 hex digits")
            try:
                role = Role(str(item.get("role")))
            except ValueError:
                raise ConfigError(f"{where}.role", "must be station, clinician or admin") from None
            station = item.get("station")
            if (role is Role.STATION) != isinstance(station, str):
                raise ConfigError(f"{where}.station", "required for role station, and only for it")
            default_name = f"{role}:{station}#{i}" if station else f"{role}#{i}"
            name = str(item.get("name") or default_name)
            entries.append((digest, Principal(role, station, name)))
        return cls(entries)

    @classmethod
    def from_file(cls, path: str) -> TokenBook:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError("tokens", f"cannot read {path}: {exc.strerror}") from None
        return cls.from_toml(text, path)

    def lookup(self, token: str) -> Principal | None:
        """The principal of ``token``; every entry is compared, so timing tells nothing."""
        digest = hashlib.sha256(token.encode("utf-8", "replace")).digest()
        found: Principal | None = None
        for known, principal in self._entries:
            if hmac.compare_digest(known, digest):
                found = principal
        return found
