"""The `compare` and `report` commands (argument handling, exit statuses); cli.py wires them in."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

import orjson

from ..settings import Settings, parse_now


def add_compare_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    cmp = sub.add_parser(
        "compare",
        help="replay request files under the current and a candidate protocol, report the cards that differ",
        description=(
            "Replays every request file (directories: every *.json below them) under the configured protocol "
            "and card wording and under the candidate, and reports per request the cards that appear, "
            "disappear or change, then a summary by rule. Exit status: 0 no change, 1 some change, 2 error."
        ),
    )
    cmp.add_argument("--protocol", required=True, type=Path, help="the candidate protocol file (YAML)")
    cmp.add_argument("--cards", type=Path, help="the candidate card wording folder (default: the current one)")
    cmp.add_argument("--now", help="evaluation time (ISO 8601 date-time; default CDS_NOW or the clock)")
    cmp.add_argument("--json", action="store_true", help="machine-readable output (for CI)")
    cmp.add_argument("paths", nargs="+", type=Path, metavar="FILE|DIR")


def add_report_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    rep = sub.add_parser(
        "report",
        help="alert report (HTML) from the configured store: audit log and feedback",
        description=(
            "Reads the audit log and the card feedback of the store the service is configured with (CDS_* "
            "settings) and writes one self-contained HTML page with charts and tables."
        ),
    )
    rep.add_argument("--since", help="first day included (ISO 8601 date or date-time, UTC)")
    rep.add_argument("--out", required=True, type=Path, help="the HTML file to write")


def run_compare(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    from ..engine import Engine
    from .compare import CompareError, compare_requests, render_text, request_files

    try:
        current_settings = Settings.from_env(audit_enabled=False)
        now = parse_now(args.now) if args.now else (current_settings.now or datetime.now(UTC))
        if not args.protocol.is_file():
            raise CompareError(f"candidate protocol {args.protocol}: no such file")
        if args.cards is not None and not args.cards.is_dir():
            raise CompareError(f"candidate cards {args.cards}: no such folder")
        files = request_files(args.paths)
        current = Engine(current_settings)
        try:
            candidate = Engine(
                current_settings.with_overrides(
                    protocol_file=args.protocol, cards_dir=args.cards or current_settings.cards_dir
                )
            )
        except Exception as exc:
            raise CompareError(f"candidate {args.protocol}: {_reason(exc)}") from exc
        comparison = compare_requests(files, current, candidate, now, base=Path.cwd())
    except CompareError as exc:
        print(f"cds-service compare: {exc}", file=err)
        return 2
    except Exception as exc:  # a candidate the rules cannot run with (a key removed, a wrong type...)
        print(f"cds-service compare: {_reason(exc)}", file=err)
        return 2
    if args.json:
        out.write(orjson.dumps(comparison.as_json(), option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        out.write(render_text(comparison))
    return 1 if comparison.changed else 0


def run_report(args: argparse.Namespace, err: TextIO | None = None) -> int:
    err = err or sys.stderr
    from ..store import Store
    from .report import build_report, render_html

    try:
        since = parse_now(args.since) if args.since else None
    except ValueError as exc:
        print(f"cds-service report: --since: {exc}", file=err)
        return 2
    settings = Settings.from_env()
    store = Store(settings.effective_database_url)
    try:
        store.create_schema()  # as the service does on start: an empty store, or one to migrate
        report = build_report(store.engine, since=since, generated_at=datetime.now(UTC))
    except Exception as exc:
        print(f"cds-service report: the store could not be read ({_reason(exc)})", file=err)
        return 2
    finally:
        store.dispose()
    try:
        args.out.write_text(render_html(report), encoding="utf-8")
    except OSError as exc:
        print(f"cds-service report: {args.out}: cannot write ({exc.strerror})", file=err)
        return 2
    print(
        f"cds-service report: {args.out}: {report.total_requests} request(s), {report.total_cards} card(s), "
        f"{report.total_feedback} feedback item(s)",
        file=err,
    )
    return 0


def _reason(exc: BaseException) -> str:
    """A one-line reason: the message for the errors this project raises, the type (and key) otherwise."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    if isinstance(exc, KeyError):
        return f"missing key {text}"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
