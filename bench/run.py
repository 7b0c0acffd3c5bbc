"""The benchmark: the real `cds-service serve` against a bare Flask app, same gunicorn settings, same run.

    python -m bench.run                 # one round of S, M, L (3-10 minutes by machine), writes bench/results/
    python -m bench.run --repeat 3      # three rounds per case, medians (steadier verdicts)
    python -m bench.run --duration 5    # shorter measured phases

For each request size (S, M, L, XL, see bench/workload.py) and each case a fresh server is started on
loopback, warmed up with validated requests, then driven by wrk (a second process, 8 connections) for a fixed
duration. The cases: the bare app; the service on the same body repeated (`service`); the service on distinct
patients, every request another patient whose resources were never seen before (`service-distinct`, the
headline); and the service on order-select then order-sign per patient (`service-pair`). Reported per case:
throughput, p50/p90/p99 latency, worker CPU per request, peak RSS per worker (VmHWM of the gunicorn workers),
responses that were not 200 with a cards array, and the load generator's own CPU. The service's distinct M
run also checks memory: worker RSS after 100 requests and after >= 10,000 requests, every one for another
patient. Results: bench/results/results.json, results.md and chart.png. See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/run.py`: import from the repository root, not from bench/
    _root = str(Path(__file__).resolve().parent.parent)
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
    sys.path.insert(0, _root)

import orjson
import requests

from bench import report
from bench.workload import (
    DEFAULT_SIZES,
    NOW,
    SERVICE_ID,
    SIZES,
    BenchRequest,
    build,
    distinct_bodies,
    select_sign_pairs,
)
from cds_service.cli import gunicorn_options
from cds_service.settings import Settings

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO_ROOT / "bench"
LUA_SCRIPT = BENCH_DIR / "requests.lua"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# Targets (both servers in the same run, 8 clients, 2 workers); distinct patients unless named otherwise.
TARGET_M_RATIO = 0.40
TARGET_S_RATIO = 0.35
TARGET_M_REPEATED_RATIO = 0.60
TARGET_M_P99_MS = 30.0
TARGET_L_P99_MS = 120.0
# The distinct workload cycles through enough patients that their resources outnumber the service's per-worker
# validation cache (CDS_VALIDATION_CACHE_SIZE default) several times over: no request is answered from it.
VALIDATION_CACHE_DEFAULT = 20000
DISTINCT_FILE_BUDGET_BYTES = 120 * 1024 * 1024
SERVICE_PATH = f"/cds-services/{SERVICE_ID}"
WORKLOAD_TARGETS = {"service": "repeated", "service-distinct": "distinct", "service-pair": "pair"}
TARGET_MEMORY_GROWTH = 0.10
LINEARITY_TOLERANCE = 1.10  # per-resource cost at L may exceed that at M by this factor (noise)
REGRESSION_LIMIT = 0.20
# The regression check compares runs of one machine: beyond this change in the bare app's M throughput the
# baseline is taken to come from another machine (or a loaded one) and the check is reported, not judged.
SAME_MACHINE_TOLERANCE = 0.25
DISTURBED_CORES = 0.2  # other load above this during a measured phase makes that case's numbers unreliable


# --- processes ------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        return [int(p) for p in text.split()]
    except OSError:
        pass
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def proc_status_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in KiB."""
    out = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (/proc/stat: everything but idle and iowait)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / CLOCK_TICKS


def wait_for_quiet(max_wait: float, threshold: float = 0.3, window: float = 1.0) -> float:
    """Wait (at most `max_wait` s) until the machine is nearly idle; returns the last busy reading in cores.

    Other people's jobs on a shared machine disturb a run; each case starts when the machine is quiet, or after
    `max_wait` seconds, and reports the CPU the rest of the machine used during its measured phase anyway.
    """
    deadline = time.monotonic() + max_wait
    while True:
        before = machine_busy_seconds()
        time.sleep(window)
        busy = (machine_busy_seconds() - before) / window
        if busy < threshold or time.monotonic() >= deadline:
            return round(busy, 2)


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


@dataclass
class Server:
    """One gunicorn server (master + workers) started by the benchmark, stopped by its pid."""

    name: str
    argv: list[str]
    env: dict[str, str]
    port: int
    log_path: Path
    workers_expected: int
    proc: subprocess.Popen[bytes] | None = None
    _log: Any = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90.0) -> None:
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            self.argv, cwd=REPO_ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log_path}")
            try:
                if requests.get(self.base_url + "/cds-services", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.2)
        else:
            raise RuntimeError(f"{self.name} did not answer within {timeout:.0f} s; see {self.log_path}")
        # Every worker loads the app after the fork: wait until all are up and idle (booted).
        previous: dict[int, float] = {}
        while time.monotonic() < deadline:
            pids = self.workers()
            cpu = {pid: proc_cpu_seconds(pid) for pid in pids}
            if len(pids) >= self.workers_expected and cpu == previous:
                return
            previous = cpu
            time.sleep(0.5)
        raise RuntimeError(f"{self.name}: workers did not settle within {timeout:.0f} s")

    def workers(self) -> list[int]:
        return sorted(_children(self.proc.pid)) if self.proc else []

    def memory(self) -> dict[int, dict[str, int]]:
        return {pid: proc_status_kib(pid) for pid in self.workers()}

    def cpu_seconds(self) -> float:
        return sum(proc_cpu_seconds(pid) for pid in self.workers())

    def log_problems(self) -> int:
        """Lines of the server's log that report an error (tracebacks, ERROR, worker timeouts)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return 0
        return sum(1 for line in text.splitlines() if "Traceback" in line or " ERROR " in line or "CRITICAL" in line)

    def stop(self) -> None:
        if self.proc is None:
            return
        workers = self.workers()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # gunicorn: graceful stop of the master and its workers
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
                for pid in workers:  # the workers of the master we had to kill, still ours if still running
                    with contextlib.suppress(OSError):
                        if str(REPO_ROOT) in Path(f"/proc/{pid}/cwd").resolve().as_posix():
                            os.kill(pid, signal.SIGKILL)
        if self._log is not None:
            self._log.close()


# --- load -----------------------------------------------------------------------------------------------
@dataclass
class Validation:
    requests: int = 0
    good: int = 0
    bad: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    cards: int = 0
    topics: list[str] = field(default_factory=list)
    first_problem: str | None = None


Workload = list[tuple[str, bytes]]  # (path, body) of each request, sent in this order and cycled


def write_workload(path: Path, workload: Workload) -> Path:
    """The requests file bench/requests.lua reads: one request a line, path TAB body (compact JSON)."""
    with path.open("wb") as out:
        for url_path, body in workload:
            if b"\n" in body or b"\t" in url_path.encode():
                raise ValueError("a benchmark body must be one line of JSON")
            out.write(url_path.encode() + b"\t" + body + b"\n")
    return path


def distinct_count(request: BenchRequest, size_bytes: int) -> int:
    """Patients in the distinct workload: their resources outnumber the validation cache 3 times over (so no
    request is answered from it), within the memory budget of the load generator."""
    wanted = math.ceil(3 * VALIDATION_CACHE_DEFAULT / request.resources)
    return max(8, min(wanted, DISTINCT_FILE_BUDGET_BYTES // max(1, size_bytes)))


def send_validated(base_url: str, workload: Workload, count: int, concurrency: int) -> Validation:
    """`count` requests of `workload` (in order, cycled) from `concurrency` threads; every response must be 200
    with a cards array."""
    result = Validation()
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    chunks = [[workload[n % len(workload)] for n in range(i, count, concurrency)] for i in range(concurrency)]

    def worker(chunk: Workload) -> list[tuple[int, Any]]:
        out = []
        with requests.Session() as session:
            for url_path, body in chunk:
                try:
                    r = session.post(base_url + url_path, data=body, headers=headers, timeout=30)
                    out.append((r.status_code, r.content))
                except requests.RequestException as exc:
                    out.append((0, type(exc).__name__.encode()))
        return out

    with ThreadPoolExecutor(concurrency) as pool:
        for replies in pool.map(worker, [c for c in chunks if c]):
            for status, content in replies:
                result.requests += 1
                result.statuses[str(status)] = result.statuses.get(str(status), 0) + 1
                problem = None
                try:
                    parsed = orjson.loads(content) if status == 200 else None
                except orjson.JSONDecodeError:
                    parsed = None
                cards = parsed.get("cards") if isinstance(parsed, dict) else None
                if status != 200:
                    problem = f"HTTP {status}: {content[:300]!r}"
                elif not isinstance(cards, list) or not all(isinstance(c, dict) for c in cards):
                    problem = f"no cards array: {content[:300]!r}"
                if problem:
                    result.bad += 1
                    result.first_problem = result.first_problem or problem
                    continue
                result.good += 1
                result.cards = len(cards)
                result.topics = sorted(
                    {str(((c.get("source") or {}).get("topic") or {}).get("code", "?")) for c in cards}
                )
    return result


def wrk_version() -> str:
    proc = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    return (proc.stdout or proc.stderr).strip().splitlines()[0] if (proc.stdout or proc.stderr) else "wrk"


def run_wrk(
    url: str, requests_path: Path, duration: int, connections: int, threads: int, log_path: Path
) -> dict[str, Any]:
    """One wrk run over a requests file; returns its WRK_JSON summary plus the generator's own CPU use."""
    argv = [
        "wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--timeout", "10s", "--latency",
        "-s", str(LUA_SCRIPT), url, "--", str(requests_path),
    ]  # fmt: skip
    started = time.monotonic()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - started
    text = log_path.read_text(errors="replace")
    lines = [line for line in text.splitlines() if line.startswith("WRK_JSON ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {text[-2000:]}")
    summary: dict[str, Any] = orjson.loads(lines[-1].removeprefix("WRK_JSON "))
    cpu = usage.ru_utime + usage.ru_stime
    summary["generator_cpu_s"] = round(cpu, 3)
    summary["generator_cpu_pct_of_core"] = round(100 * cpu / wall, 1)
    return summary


# --- one case -------------------------------------------------------------------------------------------
@dataclass
class Options:
    duration: int
    connections: int
    workers: int
    wrk_threads: int
    warmup: int
    memory_requests: int
    max_topup_seconds: int
    database_url: str | None
    quiet_wait: float
    repeat: int = 1


def server_for(target: str, opts: Options, tmp: Path, size: str) -> Server:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDS_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    if target == "bare":
        # The same worker class and keep-alive as `cds-service serve` uses by default (gevent, no keep-alive).
        served = gunicorn_options(Settings.from_env({}))
        argv = [
            sys.executable, "-m", "gunicorn", "-w", str(opts.workers), "--threads", "1", "--timeout", "30",
            "-k", served["worker_class"], "--keep-alive", str(served["keepalive"]),
            "--worker-connections", str(served["worker_connections"]),
            "-b", f"127.0.0.1:{port}", "bench.bare_app:app",
        ]  # fmt: skip
    else:
        data_dir = tmp / f"data-{target}-{size}"
        data_dir.mkdir(parents=True, exist_ok=True)
        env["CDS_DATA_DIR"] = str(data_dir)
        env["CDS_NOW"] = NOW
        if opts.database_url:
            env["CDS_DATABASE_URL"] = opts.database_url
        argv = [
            sys.executable, "-m", "cds_service.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
            "--workers", str(opts.workers), "--threads", "1",
        ]  # fmt: skip
    return Server(target, argv, env, port, tmp / f"{target}-{size}.log", opts.workers)


def run_case(
    target: str,
    size: str,
    request: BenchRequest,
    workload: Workload,
    opts: Options,
    tmp: Path,
    round_: int = 1,
) -> dict[str, Any]:
    requests_path = write_workload(tmp / f"requests-{target}-{size}.txt", workload)
    server = server_for(target, opts, tmp, size)
    url = server.base_url
    case: dict[str, Any] = {
        "target": target,
        "size": size,
        "round": round_,
        "workload": WORKLOAD_TARGETS.get(target, "distinct"),
        "distinct_requests": len({body for _, body in workload}),
    }
    label = f"{target} {size}" + (f" round {round_}" if opts.repeat > 1 else "")
    print(f"[{label}] starting {' '.join(server.argv[1:4])} ... on port {server.port}", flush=True)
    server.start()
    try:
        check_memory = target == "service-distinct" and size == "M" and opts.memory_requests > 0 and round_ == 1
        warm = send_validated(url, workload, opts.warmup, opts.connections)
        case["warmup"] = {
            "requests": warm.requests, "good": warm.good, "bad": warm.bad, "statuses": warm.statuses,
            "cards": warm.cards, "topics": warm.topics, "first_problem": warm.first_problem,
        }  # fmt: skip
        if warm.bad:
            print(f"[{label}] WARNING: {warm.bad}/{warm.requests} bad responses: {warm.first_problem}")
        sent = warm.requests
        memory_first = server.memory() if check_memory else {}
        case["machine_busy_before_cores"] = wait_for_quiet(opts.quiet_wait)
        case["python_loop_ms"] = python_loop_ms()  # the machine's speed just before this case (it drifts)
        pids_before = server.workers()
        cpu_before = server.cpu_seconds()
        busy_before = machine_busy_seconds()
        result = run_wrk(
            url, requests_path, opts.duration, opts.connections, opts.wrk_threads, tmp / f"wrk-{target}-{size}.log"
        )
        cpu_used = server.cpu_seconds() - cpu_before
        busy = machine_busy_seconds() - busy_before
        memory = server.memory()
        sent += result["requests"]
        seconds = result["duration_us"] / 1e6
        lat = result["latency_us"]
        case.update(
            requests=result["requests"],
            seconds=round(seconds, 2),
            rps=round(result["requests"] / seconds, 1),
            p50_ms=lat["p50"] / 1000,
            p90_ms=lat["p90"] / 1000,
            p99_ms=lat["p99"] / 1000,
            p999_ms=lat["p999"] / 1000,
            max_ms=lat["max"] / 1000,
            mean_ms=round(lat["mean"] / 1000, 3),
            good=result["good"],
            bad=result["bad"],
            non200=result["non200"],
            socket_errors={k: v for k, v in result["errors"].items() if k != "status"},
            worker_cpu_ms_per_request=round(1000 * cpu_used / max(1, result["requests"]), 3),
            worker_cpu_cores=round(cpu_used / seconds, 2),
            generator_cpu_pct_of_core=result["generator_cpu_pct_of_core"],
            # CPU the rest of the machine used meanwhile (other processes, kernel, gunicorn master), in cores
            other_cpu_cores=round(max(0.0, busy - cpu_used - result["generator_cpu_s"]) / seconds, 2),
            workers=[
                {"pid": pid, "peak_rss_kib": m.get("VmHWM", 0), "rss_kib": m.get("VmRSS", 0)}
                for pid, m in sorted(memory.items())
            ],
        )
        case["peak_rss_mib"] = round(max((w["peak_rss_kib"] for w in case["workers"]), default=0) / 1024, 1)
        print(
            f"[{label}] {case['rps']:.0f} req/s, p50 {case['p50_ms']:.1f} ms, p99 {case['p99_ms']:.1f} ms, "
            f"worker CPU {case['worker_cpu_ms_per_request']:.2f} ms/req, bad {case['bad']}, "
            f"wrk CPU {case['generator_cpu_pct_of_core']:.0f}% of a core, "
            f"other load {case['other_cpu_cores']:.2f} cores",
            flush=True,
        )
        if check_memory:
            case["memory_check"] = memory_check(server, url, request, opts, tmp, sent, memory_first, case)
        if server.workers() != pids_before:
            case["workers_restarted"] = True
            print(f"[{label}] WARNING: worker pids changed during the run (a worker died or was recycled)")
        case["server_log_problems"] = server.log_problems()
    finally:
        server.stop()
    return case


def memory_check(
    server: Server,
    url: str,
    request: BenchRequest,
    opts: Options,
    tmp: Path,
    sent: int,
    first: dict[int, dict[str, int]],
    case: dict[str, Any],
) -> dict[str, Any]:
    """Drive the same server to >= opts.memory_requests requests in total, every one for a patient not sent
    before (batches of fresh patients), then compare each worker's RSS."""
    extra_bad = 0
    batch = 1000
    started = time.monotonic()
    for round_no in range(math.ceil(opts.memory_requests / batch) + 3):
        remaining = opts.memory_requests - sent
        if remaining <= 0 or time.monotonic() - started > opts.max_topup_seconds:
            break
        bodies = distinct_bodies(request, batch, start=100_000 + round_no * batch)
        path = write_workload(tmp / "requests-memory.txt", [(SERVICE_PATH, body) for body in bodies])
        seconds = max(1, min(math.ceil(0.9 * batch / max(case["rps"], 1.0)), opts.max_topup_seconds))
        print(f"[memory] {sent} requests so far; {remaining} more, a batch of {batch} new patients", flush=True)
        result = run_wrk(url, path, seconds, opts.connections, opts.wrk_threads, tmp / f"wrk-memory-{round_no}.log")
        sent += result["requests"]
        extra_bad += result["bad"] + sum(v for k, v in result["errors"].items() if k != "status")
    last = server.memory()
    workers = []
    for pid, before in sorted(first.items()):
        after = last.get(pid, {})
        rss_first, rss_last = before.get("VmRSS", 0), after.get("VmRSS", 0)
        growth = (rss_last - rss_first) / rss_first if rss_first else float("nan")
        workers.append(
            {
                "pid": pid,
                "rss_after_first_kib": rss_first,
                "rss_after_last_kib": rss_last,
                "peak_rss_kib": after.get("VmHWM", 0),
                "growth_pct": round(100 * growth, 1),
            }
        )
    reached = sent >= opts.memory_requests
    ok: bool | None = bool(workers) and all(abs(w["growth_pct"]) <= 100 * TARGET_MEMORY_GROWTH for w in workers)
    if not reached:
        ok = None  # not judged: the service is too slow to serve the requests within --max-topup-seconds
        print(f"[memory] only {sent} of {opts.memory_requests} requests within the time cap: not judged", flush=True)
    print(f"[memory] after {sent} requests: " + ", ".join(f"{w['growth_pct']:+.1f}%" for w in workers), flush=True)
    return {
        "requests_first": opts.warmup,
        "requests_last": sent,
        "bad_responses": extra_bad,
        "requests_target": opts.memory_requests,
        "workers": workers,
        "pass": ok,
    }


# --- summary --------------------------------------------------------------------------------------------
def python_loop_ms(rounds: int = 5) -> float:
    """Best of `rounds` timings of a fixed pure-Python loop (dict stores, comparisons, arithmetic), in ms.

    The CPU model name does not tell a machine's speed for Python code like the service's: two machines both
    reporting "AMD EPYC" ran this benchmark's bare app 3x apart. Lower is faster.
    """
    best = math.inf
    for _ in range(rounds):
        started = time.perf_counter()
        table: dict[int, int] = {}
        total = 0
        for i in range(300_000):
            table[i & 1023] = i
            if i % 3 == 0:
                total += table[i & 511]
        best = min(best, time.perf_counter() - started)
    return round(best * 1000, 1)


def machine_info() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kib = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
    versions = {}
    for module in ("flask", "gunicorn", "orjson", "werkzeug"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            versions[module] = version(module)
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "python_loop_ms": python_loop_ms(),
        "packages": versions,
        "wrk": wrk_version(),
    }


def git_info() -> dict[str, Any]:
    def git(*args: str) -> str:
        proc = subprocess.run(
            ["git", "--no-optional-locks", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=False
        )
        return proc.stdout.strip() if proc.returncode == 0 else ""

    status = git("status", "--porcelain", "--untracked-files=no", "--", "cds_service", "protocol", "cards")
    return {"commit": git("rev-parse", "--short", "HEAD") or "unknown", "service_files_modified": bool(status)}


def case_bad(case: dict[str, Any]) -> int:
    """Warm-up and measured requests without a good answer: not 200, no cards array, or a socket error/timeout."""
    return case.get("bad", 0) + case.get("warmup", {}).get("bad", 0) + sum(case.get("socket_errors", {}).values())


# Per-run figures that a merged case reports as the median of its rounds; the others are summed or kept worst.
_MEDIAN_FIELDS = (
    "seconds", "rps", "p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms", "mean_ms", "worker_cpu_ms_per_request",
    "worker_cpu_cores", "generator_cpu_pct_of_core", "machine_busy_before_cores", "python_loop_ms",
)  # fmt: skip
_SUMMED_FIELDS = ("requests", "good", "bad", "non200")


def merge_rounds(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One case per (server, size) from the runs of every round: the median of each figure over the rounds
    (each round a fresh server, bare and service alternating), counts summed, the worst other load, peak memory
    and bad responses kept, and the figures of each round listed (`rps_by_round`, `cpu_ms_by_round`).
    A single round is returned as it was measured."""
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in runs:
        grouped.setdefault((run["target"], run["size"]), []).append(run)
    merged = []
    for group in grouped.values():
        if len(group) == 1:
            merged.append({**group[0], "rounds": 1})
            continue
        first = group[0]
        case = {k: v for k, v in first.items() if k not in ("round", "memory_check")}
        for name in _MEDIAN_FIELDS:
            values = [r[name] for r in group if r.get(name) is not None]
            if values:
                case[name] = round(statistics.median(values), 3)
        for name in _SUMMED_FIELDS:
            case[name] = sum(r.get(name, 0) for r in group)
        case["socket_errors"] = {
            key: sum(r.get("socket_errors", {}).get(key, 0) for r in group)
            for key in sorted({key for r in group for key in r.get("socket_errors", {})})
        }
        case["warmup"] = {**first["warmup"], "bad": sum(r["warmup"]["bad"] for r in group)}
        case["other_cpu_cores"] = max(r.get("other_cpu_cores", 0.0) for r in group)
        case["peak_rss_mib"] = max(r.get("peak_rss_mib", 0.0) for r in group)
        case["workers"] = [w for r in group for w in r.get("workers", [])]
        case["server_log_problems"] = sum(r.get("server_log_problems", 0) for r in group)
        if any(r.get("workers_restarted") for r in group):
            case["workers_restarted"] = True
        memory = next((r["memory_check"] for r in group if "memory_check" in r), None)
        if memory is not None:
            case["memory_check"] = memory
        case["rounds"] = len(group)
        case["rps_by_round"] = [r["rps"] for r in group]
        case["cpu_ms_by_round"] = [r["worker_cpu_ms_per_request"] for r in group]
        case["python_loop_ms_by_round"] = [r.get("python_loop_ms") for r in group]
        merged.append(case)
    return merged


def _ratio(by: dict[tuple[str, str], dict[str, Any]], target: str, size: str, key: str = "rps") -> float | None:
    """service / bare for one size: by throughput (`rps`), or by worker CPU cost (`cpu`, bare over service).

    With several rounds, the median of the rounds' ratios: each round's service run is paired with the bare
    run of the same round, so a slow spell of the machine affects both sides of a ratio.
    """
    service, bare = by.get((target, size)), by.get(("bare", size))
    if service is None or bare is None:
        return None
    field_ = "cpu_ms_by_round" if key == "cpu" else "rps_by_round"
    paired = list(zip(service.get(field_) or (), bare.get(field_) or (), strict=False))
    if len(paired) > 1 and len(service[field_]) == len(bare[field_]):
        if key == "cpu":
            return round(statistics.median(b / s for s, b in paired if s), 3)
        return round(statistics.median(s / b for s, b in paired if b), 3)
    if key == "cpu":
        cost = service["worker_cpu_ms_per_request"]
        return round(bare["worker_cpu_ms_per_request"] / cost, 3) if cost else None
    return round(service["rps"] / bare["rps"], 3)


def evaluate(cases: list[dict[str, Any]], sizes: dict[str, dict[str, Any]], baseline: dict[str, Any] | None) -> dict:
    by = {(c["target"], c["size"]): c for c in cases}
    targets_run = [t for t in WORKLOAD_TARGETS if any(c["target"] == t for c in cases)]
    ratios = {t: {s: r for s in SIZES if (r := _ratio(by, t, s)) is not None} for t in targets_run}
    cpu_ratios = {t: {s: r for s in SIZES if (r := _ratio(by, t, s, "cpu")) is not None} for t in targets_run}
    # Cost per resource on the workload that matters (distinct patients), else the repeated body.
    basis = "service-distinct" if "service-distinct" in targets_run else "service"
    service = {size: by[(basis, size)] for size in SIZES if (basis, size) in by}
    per_resource = {
        size: {
            "resources": sizes[size]["resources"],
            "cpu_ms_per_request": c["worker_cpu_ms_per_request"],
            "cpu_ms_per_resource": round(c["worker_cpu_ms_per_request"] / sizes[size]["resources"], 4),
            "p50_ms_per_resource": round(c["p50_ms"] / sizes[size]["resources"], 4),
        }
        for size, c in service.items()
    }
    # The service's own work per resource: its worker CPU minus the bare app's on the same bodies (receiving
    # and parsing the body, which costs more per byte as bodies grow, whoever parses them).
    for size, entry in per_resource.items():
        bare_cpu = by.get(("bare", size), {}).get("worker_cpu_ms_per_request")
        if bare_cpu is not None:
            entry["bare_cpu_ms_per_resource"] = round(bare_cpu / entry["resources"], 4)
            entry["own_cpu_ms_per_resource"] = round((entry["cpu_ms_per_request"] - bare_cpu) / entry["resources"], 4)
    ordered = [s for s in SIZES if s in per_resource]
    marginal = {}
    for a, b in pairwise(ordered):
        dn = per_resource[b]["resources"] - per_resource[a]["resources"]
        dc = per_resource[b]["cpu_ms_per_request"] - per_resource[a]["cpu_ms_per_request"]
        marginal[f"{a}->{b}"] = round(dc / dn, 4)
    targets = []

    def target(name: str, value: float | None, limit: str, ok: bool | None) -> None:
        targets.append({"name": name, "value": value, "limit": limit, "pass": ok})

    distinct = ratios.get("service-distinct", {})
    for size, limit in (("M", TARGET_M_RATIO), ("S", TARGET_S_RATIO)):
        if size in distinct:
            target(f"{size} distinct patients: throughput / bare", distinct[size], f">= {limit:.2f}",
                   distinct[size] >= limit)  # fmt: skip
    for size, limit in (("M", TARGET_M_P99_MS), ("L", TARGET_L_P99_MS)):
        if ("service-distinct", size) in by:
            p99 = by[("service-distinct", size)]["p99_ms"]
            target(f"{size} distinct patients: p99 latency (ms)", p99, f"<= {limit:g}", p99 <= limit)
    repeated = ratios.get("service", {})
    if "M" in repeated:
        target("M repeated body: throughput / bare", repeated["M"], f">= {TARGET_M_REPEATED_RATIO:.2f}",
               repeated["M"] >= TARGET_M_REPEATED_RATIO)  # fmt: skip
    for a, b in pairwise(ordered):
        growth = per_resource[b]["cpu_ms_per_resource"] / per_resource[a]["cpu_ms_per_resource"]
        target(
            f"cost per resource {b} / {a} ({WORKLOAD_TARGETS[basis]}, worker CPU)",
            round(growth, 3),
            f"<= {LINEARITY_TOLERANCE:.2f} (flat or falling)",
            growth <= LINEARITY_TOLERANCE,
        )
    for a, b in pairwise(ordered):
        own_a, own_b = (per_resource[x].get("own_cpu_ms_per_resource") for x in (a, b))
        if own_a and own_b:
            growth = own_b / own_a
            target(
                f"own cost per resource {b} / {a} (service minus bare, worker CPU)",
                round(growth, 3),
                f"<= {LINEARITY_TOLERANCE:.2f} (flat or falling)",
                growth <= LINEARITY_TOLERANCE,
            )
    memory = by.get(("service-distinct", "M"), {}).get("memory_check")
    if memory:
        worst = max((abs(w["growth_pct"]) for w in memory["workers"]), default=None)
        target(
            f"worker RSS growth, {memory['requests_first']} -> {memory['requests_last']} distinct requests (%)",
            worst,
            f"<= {100 * TARGET_MEMORY_GROWTH:g} %",
            memory["pass"],
        )
    bad = sum(case_bad(c) for c in cases)
    bad += memory["bad_responses"] if memory else 0
    target("responses that were not 200 with a cards array (or no response)", bad, "= 0", bad == 0)

    regression = None
    if baseline:
        # Compare like with like: distinct M when the baseline has it (schema 2), else the repeated-body M.
        old = baseline.get("ratios") or {}
        workload = "service-distinct" if isinstance(old.get("service-distinct"), dict) else "service"
        old_ratio = old[workload].get("M") if isinstance(old.get(workload), dict) else old.get("M")
        new_ratio = ratios.get(workload, {}).get("M")
        old_rps = next(
            (c["rps"] for c in baseline.get("cases", []) if c["target"] == workload and c["size"] == "M"), None
        )
        old_bare = next(
            (c["rps"] for c in baseline.get("cases", []) if c["target"] == "bare" and c["size"] == "M"), None
        )
        new_bare = by.get(("bare", "M"), {}).get("rps")
        # The bare app is the same code in both runs: when its throughput moved this much, the machine (or its
        # load) differs from the baseline's, and the service / bare ratio is not comparable across the two
        # (measured: a machine with 2x slower bare parsing ran the service 2.5-3x slower).
        bare_change = new_bare / old_bare - 1 if old_bare and new_bare else None
        comparable = bare_change is None or abs(bare_change) <= SAME_MACHINE_TOLERANCE
        if old_ratio and new_ratio:
            change = new_ratio / old_ratio - 1
            regression = {
                "workload": WORKLOAD_TARGETS[workload],
                "baseline_date": baseline.get("date"),
                "baseline_commit": (baseline.get("git") or {}).get("commit"),
                "baseline_m_ratio": old_ratio,
                "m_ratio": new_ratio,
                "baseline_m_rps": old_rps,
                "m_ratio_change_pct": round(100 * change, 1),
                "m_rps_change_pct": round(100 * (by[(workload, "M")]["rps"] / old_rps - 1), 1) if old_rps else None,
                "bare_m_rps_change_pct": round(100 * bare_change, 1) if bare_change is not None else None,
                "comparable": comparable,
            }
            limit = f">= -{100 * REGRESSION_LIMIT:g} %"
            if not comparable:
                limit += (
                    f" (not judged: the bare app's M throughput moved {100 * bare_change:+.0f} % from the "
                    "baseline's, so this is another machine or load; compare runs of one machine)"
                )
            target(
                f"M {WORKLOAD_TARGETS[workload]} throughput ratio vs previous results (%)",
                regression["m_ratio_change_pct"],
                limit,
                (change >= -REGRESSION_LIMIT) if comparable else None,
            )
    disturbed = [
        {"target": c["target"], "size": c["size"], "other_cpu_cores": c["other_cpu_cores"]}
        for c in cases
        if c.get("other_cpu_cores", 0) > DISTURBED_CORES
    ]
    return {
        "disturbed_cases": disturbed,
        "ratios": ratios,
        "cpu_ratios": cpu_ratios,
        "per_resource_workload": WORKLOAD_TARGETS[basis],
        "per_resource": per_resource,
        "marginal_cpu_ms_per_resource": marginal,
        "targets": targets,
        "regression": regression,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds of measured load per case (default 10)")
    parser.add_argument("--connections", type=int, default=8, help="concurrent connections (default 8)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers of both servers (default 2)")
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (default 1: it is not the bottleneck)")
    parser.add_argument("--warmup", type=int, default=100, help="validated warm-up requests per case (default 100)")
    parser.add_argument("--memory-requests", type=int, default=10000, help="requests for the memory check (0: skip)")
    parser.add_argument("--max-topup-seconds", type=int, default=120, help="cap on the memory check's extra load")
    parser.add_argument(
        "--quiet-wait", type=float, default=5, help="seconds to wait for an idle machine before each case (0: don't)"
    )
    parser.add_argument(
        "--sizes", default=",".join(DEFAULT_SIZES), help=f"request sizes of {','.join(SIZES)} (default S,M,L)"
    )
    parser.add_argument("--database-url", help="run the service on this database (default: SQLite in a temp dir)")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results", help="results folder")
    parser.add_argument("--baseline", type=Path, help="results.json to compare M with (default: the one in --out)")
    parser.add_argument("--strict", action="store_true", help="exit 3 when a target is missed")
    parser.add_argument(
        "--workloads",
        default="repeated,distinct,pair",
        help="service workloads to run: repeated (one body), distinct (a new patient per request), pair "
        "(order-select then order-sign per patient); default all",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="rounds per size: every case runs N times on a fresh server, bare and service alternating, and the "
        "median is reported (default 1; 3 makes the verdicts steadier on a noisy machine)",
    )
    parser.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (server and wrk logs)")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat takes a whole number >= 1")

    if shutil.which("wrk") is None:
        print("bench: wrk is not installed (Debian/Ubuntu: apt-get install -y wrk)", file=sys.stderr)
        return 2
    sizes = [s.strip().upper() for s in args.sizes.split(",") if s.strip()]
    if not sizes or any(s not in SIZES for s in sizes):
        parser.error(f"--sizes takes a comma list of {', '.join(SIZES)}")
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    names = {name: target for target, name in WORKLOAD_TARGETS.items()}
    if not workloads or any(w not in names for w in workloads):
        parser.error(f"--workloads takes a comma list of {', '.join(names)}")
    opts = Options(
        duration=args.duration,
        connections=args.connections,
        workers=args.workers,
        wrk_threads=args.wrk_threads,
        warmup=args.warmup,
        memory_requests=args.memory_requests,
        max_topup_seconds=args.max_topup_seconds,
        database_url=args.database_url,
        quiet_wait=args.quiet_wait,
        repeat=args.repeat,
    )
    baseline_path = args.baseline or args.out / "results.json"
    baseline = orjson.loads(baseline_path.read_bytes()) if baseline_path.is_file() else None

    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="cds-bench-"))
    runs: list[dict[str, Any]] = []
    request_info: dict[str, dict[str, Any]] = {}
    try:
        for size in sizes:
            request = build(size)
            raw = request.to_bytes()
            patients = distinct_count(request, len(raw))
            distinct = [(SERVICE_PATH, body) for body in distinct_bodies(request, patients)]
            by_target: dict[str, Workload] = {
                "bare": distinct,  # parsing costs the bare app the same whatever the body
                "service": [(SERVICE_PATH, raw)],
                "service-distinct": distinct,
                "service-pair": [
                    (f"/cds-services/tarlatamab-{hook}", body)
                    for hook, body in select_sign_pairs(request, max(4, patients // 2))
                ],
            }
            request_info[size] = {
                "resources": request.resources,
                "bytes": len(raw),
                "description": request.description,
                "distinct_patients": patients,
            }
            print(
                f"request {size}: {request.resources} resources, {len(raw) / 1024:.1f} KiB, "
                f"{patients} distinct patients",
                flush=True,
            )
            for round_ in range(1, opts.repeat + 1):
                for target in ("bare", *(names[w] for w in workloads)):
                    runs.append(run_case(target, size, request, by_target[target], opts, tmp, round_))
            del distinct, by_target
    finally:
        if args.keep_tmp:
            print(f"temp dir kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    cases = merge_rounds(runs)
    results: dict[str, Any] = {
        "schema": 2,
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": "python -m bench.run " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine_info(),
        "git": git_info(),
        "settings": {
            "workers": opts.workers,
            "threads": 1,
            "worker_class": gunicorn_options(Settings.from_env({}))["worker_class"],
            "keepalive_s": gunicorn_options(Settings.from_env({}))["keepalive"],
            "connections": opts.connections,
            "wrk_threads": opts.wrk_threads,
            "duration_s": opts.duration,
            "warmup_requests": opts.warmup,
            "quiet_wait_s": opts.quiet_wait,
            "memory_requests": opts.memory_requests,
            "rounds": opts.repeat,
            "cds_now": NOW,
            "database": "custom" if opts.database_url else "sqlite (temp dir)",
            "audit": "on (default)",
            "jwt": "off (open development mode, loopback)",
        },
        "requests": request_info,
        "cases": cases,
        **({"runs": runs} if opts.repeat > 1 else {}),
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    results.update(evaluate(cases, request_info, baseline))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2) + b"\n")
    (args.out / "results.md").write_text(report.markdown(results))
    chart = report.chart(results, args.out / "chart.png")
    print(report.markdown(results))
    print(f"wrote {args.out / 'results.json'}, {args.out / 'results.md'}" + (f", {chart}" if chart else ""))
    failed = [t for t in results["targets"] if t["pass"] is False]
    bad = next(t for t in results["targets"] if t["name"].startswith("responses that were not"))
    if not bad["pass"]:
        print("bench: some responses were not 200 with a cards array: the numbers are not valid", file=sys.stderr)
        return 1
    if failed and args.strict:
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
