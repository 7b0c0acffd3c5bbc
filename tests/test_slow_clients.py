"""Slow clients: `cds-service serve` keeps answering while many connections trickle their headers (slowloris).

Real server processes on loopback (2 workers, as in production); the slowloris client is bounded in time.
Measured on a 2-core machine with 100 slow connections (README "Slow clients"): sync workers and gthread
(2 x 32 threads) answer nobody for the whole attack; gevent answers /healthz in < 5 ms and a hook call in
< 20 ms.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from support_server_process import start_server
from support_slowloris import Slowloris, probe_latencies

from cds_service.cli import gunicorn_options
from cds_service.settings import REPO_ROOT, Settings

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SLOW_CONNECTIONS = 60
HOOK = "/cds-services/tarlatamab-order-sign"
BODY = (REPO_ROOT / "fixtures" / "requests" / "schedule-c1d1.json").read_bytes()


def test_legitimate_requests_are_answered_within_a_second_under_slowloris(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    server = start_server(tmp_path, tmp_path / "server.log", {"HOME": str(home)}, workers=2)
    try:
        with Slowloris(server.base_url, SLOW_CONNECTIONS, duration=20, interval=1.0) as slow:
            assert slow.opened == SLOW_CONNECTIONS
            time.sleep(1.5)  # every slow connection has been accepted and is trickling
            health = probe_latencies(server.base_url + "/healthz", 5)
            hooks = probe_latencies(server.base_url + HOOK, 5, json_body=BODY)
            # the attack was still going on while we measured
            assert slow.still_open() == SLOW_CONNECTIONS
        assert max(health) < 1.0, health
        assert max(hooks) < 1.0, hooks
    finally:
        server.stop()
    log = server.log_text()
    # no control socket: nothing under $HOME/.gunicorn, and no "Control server error" at start
    assert not (home / ".gunicorn").exists()
    assert "Control server" not in log


def test_serve_options_are_the_slow_client_safe_ones() -> None:
    options = gunicorn_options(Settings.from_env({}))
    assert options["worker_class"] == "gevent"
    assert options["worker_connections"] >= 1000
    assert options["control_socket_disable"] is True
    assert options["workers"] == 2
    assert options["keepalive"] == 0  # requests spread over the workers (README "Slow clients")
    assert "accesslog" not in options
    assert gunicorn_options(Settings.from_env({"CDS_ACCESS_LOG": "true"}))["accesslog"] == "-"
    gthread = gunicorn_options(Settings.from_env({"CDS_WORKER_CLASS": "gthread", "CDS_THREADS": "16"}))
    assert (gthread["worker_class"], gthread["threads"]) == ("gthread", 16)


def test_no_cds_variable_is_read_outside_settings() -> None:
    offenders = []
    for path in (REPO_ROOT / "cds_service").rglob("*.py"):
        if path.name == "settings.py":
            continue
        text = path.read_text(encoding="utf-8")
        if "os.environ" in text or "getenv(" in text:
            offenders.append(str(path.relative_to(REPO_ROOT)))
    assert offenders == []
