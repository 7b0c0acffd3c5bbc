"""Where the time goes: cProfile of the service on one benchmark request, in process (no gunicorn, no HTTP).

    python -m bench.profile                 # M request through the Flask app (test client), top 30 by own time
    python -m bench.profile --size L --via engine --sort cumulative

`--via app` runs the full request path (body parsing, depth check, engine, logging, audit queue); `--via engine`
calls Engine.handle on the parsed body only. `--distinct` sends each request as another patient (the benchmark's
headline workload) instead of the same body again; `--by-module` adds own time summed per module.
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

from bench.workload import NOW, SERVICE_ID, SIZES, build, distinct_bodies
from cds_service.cli import _freeze_startup_heap
from cds_service.settings import Settings, parse_now


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=SIZES, default="M")
    parser.add_argument("--via", choices=("app", "engine"), default="app")
    parser.add_argument("-n", type=int, default=200, help="profiled requests (default 200)")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--sort", default="tottime", help="pstats sort key (tottime, cumulative, ...)")
    parser.add_argument("--distinct", action="store_true", help="every request another patient (no repeated body)")
    parser.add_argument("--by-module", action="store_true", help="also print own time summed per module")
    args = parser.parse_args(argv)

    logging.disable(logging.INFO)  # the per-request log line is not what is being profiled here
    request = build(args.size)
    raw = request.to_bytes()
    warmup = 20
    bodies = distinct_bodies(request, warmup + 2 * args.n) if args.distinct else [raw]
    next_body = iter(bodies * (1 if args.distinct else warmup + 2 * args.n)).__next__
    with tempfile.TemporaryDirectory(prefix="cds-profile-") as tmp:
        settings = Settings(data_dir=Path(tmp), now=parse_now(NOW))
        call: Any
        if args.via == "app":
            from cds_service.app import create_app

            app = create_app(settings)
            client = app.test_client()

            def call() -> None:
                response = client.post(f"/cds-services/{SERVICE_ID}", data=next_body(), content_type="application/json")
                assert response.status_code == 200, response.data[:300]

        else:
            from cds_service.engine import Engine

            engine = Engine(settings)
            parsed = [orjson.loads(b) for b in bodies]
            next_parsed = iter(parsed * (1 if args.distinct else warmup + 2 * args.n)).__next__

            def call() -> None:
                engine.handle(SERVICE_ID, next_parsed())

        _freeze_startup_heap(None)  # as in each gunicorn worker: the startup heap (and the bodies) frozen
        for _ in range(warmup):  # warm-up: lazy imports, model class caches
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
    per_module = by_module(stats, args.n, args.top) if args.by_module else ""
    stats.strip_dirs().sort_stats(args.sort).print_stats(args.top)
    workload = "distinct patients" if args.distinct else "the same body repeated"
    print(
        f"{args.size} request ({request.resources} resources, {len(raw) / 1024:.1f} KiB), {workload}, via "
        f"{args.via}: {plain_ms:.2f} ms per request without the profiler; profile of {args.n} requests:"
    )
    print(out.getvalue())
    if per_module:
        print(per_module)
    return 0


def by_module(stats: pstats.Stats, requests: int, top: int) -> str:
    """Own time per source file, in µs per request, largest first (where a stage's cost lives)."""
    totals: dict[str, float] = {}
    for (filename, _line, _name), (_cc, _nc, tottime, _ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        totals[filename] = totals.get(filename, 0.0) + tottime
    grand = sum(totals.values()) or 1.0
    lines = ["own time per module (µs per request, % of profiled time):"]
    for filename, seconds in sorted(totals.items(), key=lambda item: -item[1])[:top]:
        short = "(built-in functions)" if filename == "~" else filename.split("site-packages/")[-1]
        short = short.split(str(Path.cwd()) + "/")[-1]
        lines.append(f"{seconds * 1e6 / requests:9.1f} µs  {100 * seconds / grand:5.1f} %  {short}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
