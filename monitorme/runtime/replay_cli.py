"""``monitorme replay``: run stored readings through a rule set and report the alerts it would raise."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import orjson

from monitorme.adapters.pg_reader import PgReader, create_pool
from monitorme.config import Settings, load_pipelines, load_rules
from monitorme.core.decode import parse_ts
from monitorme.core.replay import Replayer, ReplayReport
from monitorme.core.rules import validate_overrides
from monitorme.errors import ConfigError, InputError

_DAY_MS = 86_400_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="ward TOML file (env MONITORME_* wins)")
    parser.add_argument("--from", dest="from_", help="start: epoch ms or RFC 3339 (default: 24 h ago)")
    parser.add_argument("--to", help="end: epoch ms or RFC 3339 (default: now)")
    parser.add_argument("--rules", help="rules directory to try (default: the ward's)")
    parser.add_argument("--patient", help="only this patient")
    parser.add_argument("--json", help="write the report and every alert change to this file")
    parser.add_argument("--ignore-overrides", action="store_true", help="do not apply per-patient thresholds")


def _time(text: str | None, default: int, name: str) -> int:
    if text is None:
        return default
    try:
        return int(text) if text.lstrip("-").isdigit() else parse_ts(text)
    except InputError:
        raise ConfigError(f"--{name}", f"must be epoch ms or RFC 3339 with offset, got {text!r}") from None


async def run_replay(settings: Settings, args: argparse.Namespace) -> ReplayReport:
    registry = load_pipelines(settings.pipelines_dir or None)
    rules = load_rules(registry, args.rules or settings.rules_dir or None)
    now = int(time.time() * 1000)
    to_ms = _time(args.to, now, "to")
    from_ms = _time(args.from_, to_ms - _DAY_MS, "from")
    pool = await create_pool(settings.database_url, min_size=1, max_size=2)
    try:
        reader = PgReader(pool, settings.ward, registry)
        patients: dict[str, tuple[str | None, dict[str, Any] | None]] = {}
        if not args.ignore_overrides:
            for p in await reader.patients():
                try:
                    patients[p.patient] = (p.station, validate_overrides(rules.rules, p.thresholds))
                except ConfigError:
                    patients[p.patient] = (p.station, None)  # stored thresholds no longer fit these rules
        replayer = Replayer(settings.ward, rules, patients=patients, lateness_ms=settings.analysis_lateness_s * 1000)
        async for chunk in reader.iter_readings(from_ms, to_ms, args.patient):
            replayer.feed(chunk)
        return replayer.finish()
    finally:
        await pool.close()


def render(report: ReplayReport) -> str:
    s = report.summary()
    lines = [
        f"replayed {s['readings']} readings of {s['patients']} patients ({s['patient_days']} patient-days)",
        f"alerts raised: {s['alerts']} ({s['clinical_alerts']} clinical), "
        f"{s['alerts_per_patient_day']} per patient-day ({s['clinical_alerts_per_patient_day']} clinical)",
        "",
        f"{'rule':<28} {'priority':<8} {'count':>6}",
    ]
    lines += [f"{r['rule']:<28} {r['priority']:<8} {r['count']:>6}" for r in s["by_rule"]]
    return "\n".join(lines)


def write_json(report: ReplayReport, path: str) -> None:
    doc = {"summary": report.summary(), "alerts": [a.as_json() for a in report.alerts]}
    Path(path).write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
