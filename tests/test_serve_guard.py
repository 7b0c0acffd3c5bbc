"""`cds-service serve` refuses a non-loopback address in open development mode (no trusted issuers)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from support_security import issuer_entry, new_key, write_issuers

from cds_service import cli
from cds_service.settings import REPO_ROOT


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    """Replaces gunicorn's run loop: records the bind address instead of serving."""
    from gunicorn.app.base import BaseApplication

    binds: list[str] = []

    def fake_run(self: Any) -> None:
        binds.append(self.cfg.bind[0])

    monkeypatch.setattr(BaseApplication, "run", fake_run)
    monkeypatch.setenv("CDS_DATA_DIR", str(tmp_path))
    # In-process: the sync worker class, so that serve does not gevent-patch the test runner.
    monkeypatch.setenv("CDS_WORKER_CLASS", "sync")
    for name in ("CDS_TRUSTED_ISSUERS_FILE", "CDS_HOST", "CDS_PUBLIC_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    return binds


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "10.0.0.5", "cds.example.org", "127.0.0.1.nip.io"])
def test_open_mode_refuses_non_loopback(started: list[str], host: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["serve", "--host", host, "--port", "18080", "--workers", "1"]) == 2
    assert started == []
    assert "refusing to listen on a non-loopback address" in capsys.readouterr().err


def test_open_mode_refuses_non_loopback_from_the_environment(
    started: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CDS_HOST", "0.0.0.0")
    assert cli.main(["serve", "--workers", "1"]) == 2
    assert started == []


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_open_mode_serves_on_loopback_and_says_so(
    started: list[str], host: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["serve", "--host", host, "--port", "18080", "--workers", "1"]) == 0
    assert started == [f"{host}:18080"]
    assert "OPEN DEVELOPMENT MODE" in capsys.readouterr().err


def test_trusted_issuers_allow_any_address(
    started: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_issuers(tmp_path / "issuers.json", issuer_entry([new_key("ES384")]))
    monkeypatch.setenv("CDS_TRUSTED_ISSUERS_FILE", str(path))
    assert cli.main(["serve", "--host", "0.0.0.0", "--port", "18080", "--workers", "1"]) == 0
    assert started == ["0.0.0.0:18080"]
    assert "OPEN DEVELOPMENT MODE" not in capsys.readouterr().err


def test_real_process_refuses_and_binds_nothing(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDS_")}
    env["CDS_DATA_DIR"] = str(tmp_path)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run(
        [sys.executable, "-m", "cds_service.cli", "serve", "--host", "0.0.0.0", "--port", str(port)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "CDS_TRUSTED_ISSUERS_FILE" in result.stderr
    with socket.socket() as probe:  # nothing listens on the port
        probe.settimeout(0.5)
        assert probe.connect_ex(("127.0.0.1", port)) != 0


def test_broken_issuers_file_fails_at_start_not_in_the_workers(
    started: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    issuers = tmp_path / "issuers.json"
    issuers.write_text('{"issuers": [{"iss": "https://ehr.example", "jwks": {"keys": []}, "typo": 1}]}')
    monkeypatch.setenv("CDS_TRUSTED_ISSUERS_FILE", str(issuers))
    assert cli.main(["serve", "--host", "0.0.0.0", "--port", "18080", "--workers", "1"]) == 2
    assert started == []
    assert "cds-service:" in capsys.readouterr().err


def test_trusted_mode_without_public_base_url_warns(
    started: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = new_key("ES384")
    monkeypatch.setenv("CDS_TRUSTED_ISSUERS_FILE", str(write_issuers(tmp_path / "issuers.json", issuer_entry([key]))))
    assert cli.main(["serve", "--host", "0.0.0.0", "--port", "18080", "--workers", "1"]) == 0
    assert started == ["0.0.0.0:18080"]
    assert "CDS_PUBLIC_BASE_URL is not set" in capsys.readouterr().err


def test_workers_freeze_the_startup_heap_and_flush_the_audit_on_exit(started: list[str]) -> None:
    """The gunicorn hooks that keep full garbage collections off the request path and lose no audit entry."""
    import gc

    from gunicorn.app.base import BaseApplication

    captured: dict[str, Any] = {}

    def fake_run(self: Any) -> None:
        captured["post_worker_init"] = self.cfg.post_worker_init
        captured["worker_exit"] = self.cfg.worker_exit

    BaseApplication.run = fake_run  # restored by the started fixture's monkeypatch
    assert cli.main(["serve", "--host", "127.0.0.1", "--port", "18080", "--workers", "1"]) == 0
    try:
        captured["post_worker_init"](None)
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()

    class Writer:
        closed = False

        def close(self) -> None:
            Writer.closed = True

    class Worker:
        wsgi = type("App", (), {"extensions": {"cds_audit_writer": Writer()}})()

    captured["worker_exit"](None, Worker())
    assert Writer.closed
