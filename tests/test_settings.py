"""Settings: one place, validated at start with one-line errors (real `cds-service` processes)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from support_server_process import start_server

from cds_service.settings import REPO_ROOT, Settings, SettingsError


def run_cli(args: list[str], env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CDS_")}
    clean.update({"CDS_DATA_DIR": str(tmp_path), **env})
    return subprocess.run(
        [sys.executable, "-m", "cds_service.cli", *args],
        cwd=REPO_ROOT,
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
        start_new_session=True,
    )


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("CDS_WORKERS", "abc", "CDS_WORKERS: Input should be a valid integer"),
        ("CDS_LOG_LEVEL", "verbose", "CDS_LOG_LEVEL: Input should be 'DEBUG', 'INFO', 'WARNING', 'ERROR' or 'CRITICAL'"),
        ("CDS_SITE_TIMEZONE", "Europe/Atlantis", "CDS_SITE_TIMEZONE: not an IANA time zone name"),
        ("CDS_PORT", "70000", "CDS_PORT: Input should be less than or equal to 65535"),
        ("CDS_FHIR_TIMEOUT", "-1", "CDS_FHIR_TIMEOUT: Input should be greater than 0"),
        ("CDS_AUDIT_ENABLED", "maybe", "CDS_AUDIT_ENABLED: Input should be a valid boolean"),
        ("CDS_WORKER_CLASS", "eventlet", "CDS_WORKER_CLASS: Input should be 'gevent', 'gthread' or 'sync'"),
    ],
)
def test_a_bad_setting_stops_serve_with_one_line_and_exit_2(
    tmp_path: Path, name: str, value: str, expected: str
) -> None:
    result = run_cli(["serve"], {name: value}, tmp_path)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("cds-service: invalid setting ")
    assert expected in lines[0]
    assert "Traceback" not in result.stderr


def test_replay_and_protocol_refuse_bad_settings_too(tmp_path: Path) -> None:
    result = run_cli(["protocol"], {"CDS_LOG_LEVEL": "loud"}, tmp_path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "CDS_LOG_LEVEL" in result.stderr


def test_settings_read_every_documented_variable() -> None:
    settings = Settings.from_env(
        {
            "CDS_WORKERS": "3",
            "CDS_THREADS": "4",
            "CDS_HOST": "::1",
            "CDS_PORT": "9000",
            "CDS_ACCESS_LOG": "on",
            "CDS_FORWARDED_ALLOW_IPS": "10.0.0.2",
            "CDS_LOG_LEVEL": "warning",
            "CDS_SITE_TIMEZONE": "America/Chicago",
            "CDS_FHIR_TIMEOUT": "3.5",
            "CDS_CORS_ORIGINS": "https://a.example, https://b.example",
            "CDS_OPEN_MODE_FHIR_HOSTS": "FHIR.Example.org",
        }
    )
    assert (settings.workers, settings.threads, settings.host, settings.port) == (3, 4, "::1", 9000)
    assert settings.access_log is True and settings.forwarded_allow_ips == "10.0.0.2"
    assert settings.log_level == "WARNING" and settings.site_timezone == "America/Chicago"
    assert settings.fhir_total_timeout == 3.5
    assert settings.cors_origins == ("https://a.example", "https://b.example")
    assert settings.open_mode_fhir_hosts == ("fhir.example.org",)
    with pytest.raises(SettingsError, match=r"^invalid setting CDS_THREADS"):
        Settings.from_env({"CDS_THREADS": "0"})


def test_readme_and_docs_document_every_setting() -> None:
    from cds_service.settings import env_name

    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    docs = (REPO_ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    missing = [env_name(f) for f in Settings.model_fields if env_name(f) not in readme or env_name(f) not in docs]
    assert missing == []


def test_first_start_prints_the_open_mode_banner_once_and_no_schema_race(tmp_path: Path) -> None:
    server = start_server(tmp_path / "fresh", tmp_path / "server.log", workers=2)
    try:
        server.stop()
    finally:
        server.stop()
    log = server.log_text()
    assert log.count("OPEN DEVELOPMENT MODE") == 1, log
    assert "open development mode" not in log  # the workers do not repeat it
    assert "raced" not in log
    assert "Traceback" not in log
