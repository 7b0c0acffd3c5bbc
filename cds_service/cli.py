"""`cds-service`: serve (gunicorn), replay request files, preview their cards, print the protocol's rule
catalogue, compare a candidate protocol, write the alert report."""

from __future__ import annotations

import argparse
import gc
import logging
import sys
from pathlib import Path
from typing import Any

import orjson

from .errors import ServiceError
from .governance.commands import add_compare_parser, add_report_parser, run_compare, run_report
from .hook_request import raise_for_depth
from .protocol import ProtocolError
from .services import SERVICES, SERVICES_BY_ID
from .settings import Settings, parse_now

HOOK_TO_SERVICE = {s.hook: s.id for s in SERVICES}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cds-service", description="Tarlatamab (IMDELLTRA) CDS Hooks service")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the service under gunicorn")
    serve.add_argument("--host", help="address to listen on (default CDS_HOST, else 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default CDS_PORT, else 8080)")
    serve.add_argument("--workers", type=int, help="worker processes (default CDS_WORKERS, else 2)")
    serve.add_argument("--threads", type=int, help="threads per gthread worker (default CDS_THREADS, else 8)")
    serve.add_argument("--timeout", type=int, help="worker timeout in seconds (default CDS_WORKER_TIMEOUT, else 30)")

    replay = sub.add_parser("replay", help="run CDS Hooks request files through the service, print the responses")
    replay.add_argument("--now", help="evaluation time (ISO 8601 date-time)")
    replay.add_argument("--service", choices=sorted(SERVICES_BY_ID), help="service id (default: from the file's hook)")
    replay.add_argument("--pretty", action="store_true", help="indent the JSON output")
    replay.add_argument("files", nargs="+", type=Path)

    preview = sub.add_parser(
        "preview", help="render the cards of request files (replayed) or response files as an HTML page"
    )
    preview.add_argument("--now", help="evaluation time for request files (ISO 8601 date-time)")
    preview.add_argument("--out", type=Path, default=Path("cards.html"), help="HTML file to write (cards.html)")
    preview.add_argument("files", nargs="+", type=Path)

    proto = sub.add_parser("protocol", help="print the rule catalogue of the protocol file")
    proto.add_argument(
        "--markdown", action="store_true", help="the pharmacist-facing document (docs/protocol-rules.md)"
    )

    add_compare_parser(sub)
    add_report_parser(sub)

    args = parser.parse_args(argv)
    if args.command == "compare":
        return run_compare(args)
    if args.command == "report":
        return run_report(args)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "replay":
            return _replay(args)
        if args.command == "preview":
            return _preview(args)
        return _protocol(args)
    except (ProtocolError, ValueError) as exc:
        print(f"cds-service: {exc}", file=sys.stderr)
        return 2


def _serve(args: argparse.Namespace) -> int:
    from .client_auth import is_loopback_host

    cli_values = {"host": args.host, "port": args.port, "workers": args.workers, "threads": args.threads}
    cli_values["worker_timeout"] = args.timeout
    settings = Settings.from_env(**{k: v for k, v in cli_values.items() if v is not None})
    if settings.worker_class == "gevent":
        # Patch before requests/urllib3 and the logging locks are created in this (the master) process, so the
        # forked workers inherit cooperative sockets, ssl and locks (gevent's advice: patch first).
        from gevent import monkey

        monkey.patch_all()
    _configure_logging(settings.log_level)
    if settings.trusted_issuers_file is None:
        if not is_loopback_host(settings.host):
            print(
                "cds-service: refusing to listen on a non-loopback address without trusted issuers "
                "(set CDS_TRUSTED_ISSUERS_FILE); open development mode binds to loopback only",
                file=sys.stderr,
            )
            return 2
        _open_mode_banner(settings)
    from gunicorn.app.base import BaseApplication

    from .app import create_app

    # Check the configuration once in the parent, so that a bad protocol, card or issuers file fails here,
    # loudly, rather than in every worker; and create the tables once, before the workers start.
    from .engine import Engine
    from .store import Store

    Engine(settings)
    store = Store(settings.effective_database_url)
    try:
        store.create_schema()
        if settings.trusted_issuers_file is not None:
            from .jwt_auth import JwtClientAuth

            JwtClientAuth.from_settings(settings, store)
    finally:
        store.dispose()
    if settings.trusted_issuers_file is not None and settings.public_base_url is None:
        warning = (
            "CDS_PUBLIC_BASE_URL is not set: the JWT audience is checked against the Host header of each "
            "request; set it to the URL the EHRs call"
        )
        print(f"cds-service: warning: {warning}", file=sys.stderr)

    class _Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for name, value in gunicorn_options(settings).items():
                self.cfg.set(name, value)
            self.cfg.set("worker_exit", _flush_audit_on_exit)
            self.cfg.set("post_worker_init", _freeze_startup_heap)

        def load(self) -> Any:
            return create_app(settings, announce_open_mode=False)

    _Server().run()
    return 0


def gunicorn_options(settings: Settings) -> dict[str, Any]:
    """The gunicorn configuration of `cds-service serve` (a pure function of the settings)."""
    options: dict[str, Any] = {
        "bind": f"{settings.host}:{settings.port}",
        "workers": settings.workers,
        # gevent (default): each connection is a greenlet, so clients that trickle their headers (slowloris)
        # hold a socket, not a worker; sync and gthread workers block a process or a thread on each of them
        # (measured: tests/test_slow_clients.py and the README's "Slow clients" section).
        "worker_class": settings.worker_class,
        "threads": settings.threads if settings.worker_class == "gthread" else 1,
        "worker_connections": 1000,
        "timeout": settings.worker_timeout,
        "graceful_timeout": 10,
        "keepalive": settings.keepalive_seconds,
        # No control socket: it would be shared by two instances on one host ($HOME/.gunicorn) and fails in
        # an image whose HOME is not writable.
        "control_socket_disable": True,
        "limit_request_line": 8190,
        "limit_request_fields": 100,
        "limit_request_field_size": 16384,
        "forwarded_allow_ips": settings.forwarded_allow_ips,
    }
    # The service logs one line per hook call itself (service, hookInstance, patient id, cards, time) and
    # audits every response; gunicorn's access log is a second line per request, so it is opt-in.
    if settings.access_log:
        options["accesslog"] = "-"
        # Never the Authorization header or query strings: method, path, status, size, time only.
        options["access_log_format"] = '%(h)s "%(m)s %(U)s" %(s)s %(B)s %(M)sms'
    return options


def _open_mode_banner(settings: Settings) -> None:
    """Printed once, by the parent process (the workers do not repeat it)."""
    hosts = ", ".join(("loopback", *settings.open_mode_fhir_hosts))
    banner = (
        "OPEN DEVELOPMENT MODE: no CDS client JWT is verified (CDS_TRUSTED_ISSUERS_FILE is not set); "
        f"listening on loopback {settings.host}:{settings.port} only; fhirServer contacted only on: {hosts}"
    )
    print("!" * 80, file=sys.stderr)
    print(banner, file=sys.stderr)
    print("!" * 80, file=sys.stderr)


GC_YOUNG_THRESHOLD = 20_000


def _freeze_startup_heap(_worker: Any) -> None:
    """Gunicorn hook: move the objects built at start (models, protocol, cards) out of the collector's reach.

    The FHIR models make ~100,000 long-lived objects; without this every full collection walks them all
    and stalls a request for ~50 ms (measured), which is what the p99 latency of a worker then shows.
    """
    gc.collect()
    gc.freeze()
    # A request's objects die by reference counting when it ends; with the default threshold (700 surviving
    # allocations) a medium request still paid two young collections (~50 us, measured). Collections now
    # come every few hundred requests; the benchmark's memory check (10,000 requests) shows the heap flat.
    gc.set_threshold(GC_YOUNG_THRESHOLD, 10, 10)


def _flush_audit_on_exit(_server: Any, worker: Any) -> None:
    """Gunicorn hook: write the audit entries still queued before a worker process ends."""
    app = getattr(worker, "wsgi", None)
    writer = app.extensions.get("cds_audit_writer") if app is not None and hasattr(app, "extensions") else None
    if writer is not None:
        writer.close()


def _configure_logging(level: str) -> None:
    # The format names no thread: skip looking it up for every record (under gevent, threading.current_thread()
    # is a greenlet look-up on every request's log line). Python's logging HOWTO, "Optimization".
    logging.logThreads = False
    logging.logMultiprocessing = False
    logging.basicConfig(
        level=getattr(logging, level),
        format="%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s",
        stream=sys.stderr,
    )
    from . import logsafe

    logsafe.install()


def _replay(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {"audit_enabled": False}
    if args.now:
        overrides["now"] = parse_now(args.now)
    settings = Settings.from_env(**overrides)
    from .engine import Engine

    engine = Engine(settings)
    for path in args.files:
        try:
            raw = path.read_bytes()
        except OSError as exc:
            print(f"cds-service replay: {path}: cannot read ({exc.strerror})", file=sys.stderr)
            return 1
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            print(f"cds-service replay: {path}: not valid JSON ({exc.msg})", file=sys.stderr)
            return 1
        service_id = args.service
        if service_id is None:
            hook = body.get("hook") if isinstance(body, dict) else None
            service_id = HOOK_TO_SERVICE.get(hook) if isinstance(hook, str) else None
            if service_id is None:
                print(f"cds-service replay: {path}: no service answers hook {hook!r}; use --service", file=sys.stderr)
                return 1
        try:
            raise_for_depth(body, settings)
            outcome = engine.handle(service_id, body)
        except ServiceError as exc:
            print(f"cds-service replay: {path}: HTTP {exc.status}: {exc.summary}", file=sys.stderr)
            return 1
        option = orjson.OPT_INDENT_2 if args.pretty else 0
        sys.stdout.write(orjson.dumps(outcome.body, option=option).decode() + "\n")
    return 0


def _preview(args: argparse.Namespace) -> int:
    """Cards of each file as a reviewer sees them: a response file as is, a request file replayed first."""
    from .protocol_page import preview_page

    overrides: dict[str, Any] = {"audit_enabled": False}
    if args.now:
        overrides["now"] = parse_now(args.now)
    settings = Settings.from_env(**overrides)
    engine = None
    responses: list[tuple[str, dict[str, Any]]] = []
    for path in args.files:
        try:
            body = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            print(f"cds-service preview: {path}: cannot read a JSON file ({exc})", file=sys.stderr)
            return 1
        if isinstance(body, dict) and isinstance(body.get("cards"), list):
            responses.append((path.name, body))
            continue
        hook = body.get("hook") if isinstance(body, dict) else None
        service_id = HOOK_TO_SERVICE.get(hook) if isinstance(hook, str) else None
        if service_id is None:
            print(f"cds-service preview: {path}: neither a response nor a request of a known hook", file=sys.stderr)
            return 1
        if engine is None:
            from .engine import Engine

            engine = Engine(settings)
        try:
            raise_for_depth(body, settings)
            outcome = engine.handle(service_id, body)
        except ServiceError as exc:
            print(f"cds-service preview: {path}: HTTP {exc.status}: {exc.summary}", file=sys.stderr)
            return 1
        responses.append((f"{path.name} ({service_id})", outcome.body))
    args.out.write_text(preview_page(responses), encoding="utf-8")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def _protocol(args: argparse.Namespace) -> int:
    from .protocol import load_protocol
    from .protocol_doc import catalogue_table, pharmacist_document

    settings = Settings.from_env()
    protocol = load_protocol(settings.protocol_file)
    sys.stdout.write(pharmacist_document(protocol) if args.markdown else catalogue_table(protocol))
    return 0


if __name__ == "__main__":
    sys.exit(main())
