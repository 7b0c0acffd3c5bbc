"""Where the time goes: cProfile of the service on one benchmark request, in process (no gunicorn, no HTTP).

    python -m bench.profile                 # M request through the Flask app (test client), top 30 by own time
    python -m bench.profile --size L --via engine --sort cumulative

`--via app` runs the full request path (body parsing, depth check, engine, logging, audit queue); `--via engine`
calls Engine.handle on the parsed body only.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import logging
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson

from bench.workload import NOW, SERVICE_ID, SIZES, build
from cds_service.settings import Settings, parse_now


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=SIZES, default="M")
    parser.add_argument("--via", choices=("app", "engine"), default="app")
    parser.add_argument("-n", type=int, default=200, help="profiled requests (default 200)")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--sort", default="tottime", help="pstats sort key (tottime, cumulative, ...)")
    args = parser.parse_args(argv)

    logging.disable(logging.INFO)  # the per-request log line is not what is being profiled here
    request = build(args.size)
    raw = request.to_bytes()
    with tempfile.TemporaryDirectory(prefix="cds-profile-") as tmp:
        settings = Settings(data_dir=Path(tmp), now=parse_now(NOW))
        call: Any
        if args.via == "app":
            from cds_service.app import create_app

            app = create_app(settings)
            client = app.test_client()

            def call() -> None:
                response = client.post(f"/cds-services/{SERVICE_ID}", data=raw, content_type="application/json")
                assert response.status_code == 200, response.data[:300]

        else:
            from cds_service.engine import Engine

            engine = Engine(settings)
            body = orjson.loads(raw)

            def call() -> None:
                engine.handle(SERVICE_ID, body)

        for _ in range(20):  # warm-up: lazy imports, model class caches
            call()
        started = time.perf_counter()
        for _ in range(args.n):
            call()
        plain_ms = (time.perf_counter() - started) * 1000 / args.n
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(args.n):
            call()
        profiler.disable()
        if args.via == "app":
            writer = app.extensions.get("cds_audit_writer")
            if writer is not None:
                writer.flush()
            app.extensions["cds_store"].dispose()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.strip_dirs().sort_stats(args.sort).print_stats(args.top)
    print(
        f"{args.size} request ({request.resources} resources, {len(raw) / 1024:.1f} KiB) via {args.via}: "
        f"{plain_ms:.2f} ms per request without the profiler; profile of {args.n} requests:"
    )
    print(out.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
