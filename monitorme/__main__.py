"""Command line: ``monitorme run | migrate | check | simulate | demo``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Coroutine
from typing import Any

from monitorme.config import load_pipelines, load_settings
from monitorme.errors import ConfigError, StoreError
from monitorme.logs import setup_logging

log = logging.getLogger("monitorme")


def _run_async(coro: Coroutine[Any, Any, Any]) -> Any:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        return asyncio.run(coro)
    return uvloop.run(coro)


def cmd_run(args: argparse.Namespace) -> int:
    from monitorme.runtime.app import run_forever

    settings = load_settings(args.config)
    setup_logging(settings.log_format, settings.log_level)
    _run_async(run_forever(settings, insecure_no_auth=args.insecure_no_auth))
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from monitorme.adapters.migrations import apply_migrations

    settings = load_settings(args.config)
    setup_logging(settings.log_format, settings.log_level)
    try:
        applied = _run_async(apply_migrations(settings.database_url))
    except StoreError as exc:
        raise ConfigError("database.url", str(exc)) from None
    print(f"applied {len(applied)} migration(s): {', '.join(applied) or 'schema is current'}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from monitorme.config import load_rules

    settings = load_settings(args.config)
    registry = load_pipelines(settings.pipelines_dir or None)
    rules = load_rules(registry, settings.rules_dir or None)
    print(f"config ok: ward {settings.ward}; {len(registry)} vitals: {', '.join(registry.vitals)};"
          f" {len(rules.rules)} rules")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from monitorme.runtime import replay_cli

    settings = load_settings(args.config)
    setup_logging(settings.log_format, "WARNING")
    report = _run_async(replay_cli.run_replay(settings, args))
    print(replay_cli.render(report))
    if args.json:
        replay_cli.write_json(report, args.json)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="monitorme", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one ward's daemon until SIGTERM/SIGINT")
    run.add_argument("--config", help="ward TOML file (env MONITORME_* wins)")
    run.add_argument("--insecure-no-auth", action="store_true", help="serve the API without tokens")
    run.set_defaults(func=cmd_run)
    migrate = sub.add_parser("migrate", help="apply migrations/*.sql in order, idempotently")
    migrate.add_argument("--config")
    migrate.set_defaults(func=cmd_migrate)
    check = sub.add_parser("check", help="validate the config and pipelines/ offline")
    check.add_argument("--config")
    check.set_defaults(func=cmd_check)
    replay = sub.add_parser("replay", help="run stored readings through a rule set; report the alerts")
    from monitorme.runtime.replay_cli import add_arguments

    add_arguments(replay)
    replay.set_defaults(func=cmd_replay)
    try:
        from monitorme.sim import cli as sim_cli
    except ImportError:  # pragma: no cover
        pass
    else:
        sim_cli.add_parser(sub)
    try:
        from monitorme.demo import cli as demo_cli
    except ImportError:  # pragma: no cover
        pass
    else:
        demo_cli.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from monitorme.runtime.lease import LeaseLost

    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"monitorme: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except LeaseLost as exc:  # EX_TEMPFAIL: the supervisor restarts us, and we wait as standby
        print(f"monitorme: {exc}", file=sys.stderr)
        return 75
    return code


if __name__ == "__main__":
    sys.exit(main())
