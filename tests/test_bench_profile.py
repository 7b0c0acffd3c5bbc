"""`python -m bench.profile`: the in-process profile runs on distinct patients and sums own time per module."""

from __future__ import annotations

import gc
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # bench/ is not an installed package
    sys.path.insert(0, str(REPO_ROOT))

from bench import profile  # noqa: E402


@pytest.fixture
def restore_gc():
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()  # the profile freezes the heap as a gunicorn worker does; give this process its own back
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("restore_gc")
def test_distinct_profile_with_module_totals(capsys: pytest.CaptureFixture[str]) -> None:
    assert profile.main(["--size", "S", "-n", "4", "--distinct", "--by-module", "--top", "50"]) == 0
    out = capsys.readouterr().out
    assert "distinct patients" in out and "ms per request without the profiler" in out
    modules = out.split("own time per module")[1]
    assert "cds_service/engine.py" in modules and "cds_service/reading/structure.py" in modules
    assert "(built-in functions)" in modules


@pytest.mark.usefixtures("restore_gc")
def test_the_distinct_profile_sends_another_patient_each_time(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    from cds_service.engine import Engine

    real = Engine.handle

    def spy(self, service_id, body, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(body["context"]["patientId"])
        return real(self, service_id, body, **kwargs)

    monkeypatch.setattr(Engine, "handle", spy)
    assert profile.main(["--size", "S", "-n", "3", "--distinct", "--via", "engine", "--top", "1"]) == 0
    assert len(seen) == len(set(seen)) == 20 + 2 * 3  # warm-up, timed and profiled requests: all different
