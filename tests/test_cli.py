"""`cds-service replay`: the same code path as the endpoint, one-line errors on bad files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fhir_builders import administration, hook_request, normal_labs, tarlatamab_order

from cds_service.cli import main


def _replay(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["replay", *args])
    out, err = capsys.readouterr()
    return code, out, err


def _request(tmp_path: Path, body: Any, name: str = "request.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(body), encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def _isolated_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("CDS_NOW", raising=False)


def test_replay_prints_what_the_endpoint_returns(tmp_path: Path, capsys: Any, client: Any) -> None:
    body = hook_request(
        drafts=[tarlatamab_order("2026-11-21T10:00:00Z", 10)],
        administrations=[administration("2026-11-14T09:00:00Z", 10), administration("2026-11-07T09:00:00Z", 1)],
        observations=normal_labs("2026-11-20T07:30:00Z"),
        hook_instance="8a3c1f0e-5d0b-4f3e-9a8e-1b2c3d4e5f60",
    )
    code, out, err = _replay(capsys, "--now", "2026-11-21T09:00:00Z", str(_request(tmp_path, body)))
    assert code == 0, err
    http = client.post("/cds-services/tarlatamab-order-sign", json=body)
    assert http.status_code == 200
    assert out.strip().encode() == http.data  # byte for byte, uuids included
    assert json.loads(out)["cards"], "a C1D15 order gets at least its monitoring card"


def test_replay_chooses_the_service_by_hook_or_option(tmp_path: Path, capsys: Any) -> None:
    body = hook_request("patient-view")
    path = _request(tmp_path, body)
    code, out, _ = _replay(capsys, str(path))
    assert code == 0
    assert json.loads(out) == {"cards": []}  # never treated: no card
    code, _, err = _replay(capsys, "--service", "tarlatamab-order-sign", str(path))
    assert code == 1
    assert "HTTP 400" in err and "order-sign" in err


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "cannot read"),
        ("{not json", "not valid JSON"),
        (json.dumps({"hook": "encounter-start", "context": {}}), "no service answers hook"),
        (json.dumps({"hook": "order-sign", "hookInstance": "x"}), "HTTP 400: Missing required field context"),
        (json.dumps([1, 2]), "no service answers hook"),
    ],
)
def test_replay_bad_file_exits_non_zero_with_one_line(
    tmp_path: Path, capsys: Any, content: str | None, expected: str
) -> None:
    path = tmp_path / "bad.json"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    code, out, err = _replay(capsys, str(path))
    assert code != 0
    assert out == ""
    assert expected in err
    assert len(err.strip().splitlines()) == 1


def test_replay_bad_now_is_a_usage_error(tmp_path: Path, capsys: Any) -> None:
    code, _, err = _replay(capsys, "--now", "yesterday", str(_request(tmp_path, hook_request("patient-view"))))
    assert code == 2
    assert "ISO 8601" in err


def test_console_script_entry_point_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cds_service.cli", "protocol"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    assert "dose.step-up-skipped" in result.stdout


def test_worker_start_freezes_the_startup_heap_and_raises_the_young_threshold() -> None:
    """Each gunicorn worker moves what it built at start out of the collector's reach and collects the young
    generation only every GC_YOUNG_THRESHOLD surviving allocations (a request's objects die by reference
    counting)."""
    import gc

    from cds_service import cli

    before = gc.get_threshold()
    try:
        cli._freeze_startup_heap(None)
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (cli.GC_YOUNG_THRESHOLD, 10, 10)
        assert before[0] < cli.GC_YOUNG_THRESHOLD
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
