"""The benchmark's verdicts (bench/run.py `evaluate`): ratios, cost per resource (total and the service's own,
service minus bare) and their targets, computed from measured cases; here from made-up cases whose answers
are known."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # bench/ is not an installed package
    sys.path.insert(0, str(REPO_ROOT))

from bench.run import evaluate  # noqa: E402

RESOURCES = {"L": 700, "XL": 3000}


def _case(target: str, size: str, rps: float, cpu_ms: float) -> dict[str, Any]:
    return {
        "target": target,
        "size": size,
        "rps": rps,
        "worker_cpu_ms_per_request": cpu_ms,
        "p50_ms": cpu_ms * 4,
        "p99_ms": cpu_ms * 8,
        "bad": 0,
        "non200": 0,
        "errors": 0,
        "other_cpu_cores": 0.0,
    }


def _targets(bare_xl_cpu: float, service_xl_cpu: float) -> dict[str, Any]:
    cases = [
        _case("bare", "L", 400, 4.0),
        _case("service-distinct", "L", 140, 11.0),  # own work 7.0 ms: 0.01 ms per resource
        _case("bare", "XL", 60, bare_xl_cpu),
        _case("service-distinct", "XL", 25, service_xl_cpu),
    ]
    sizes = {size: {"resources": n} for size, n in RESOURCES.items()}
    results = evaluate(cases, sizes, None)
    return {"per": results["per_resource"], "targets": {t["name"]: t for t in results["targets"]}}


def test_own_cost_per_resource_is_service_minus_bare() -> None:
    found = _targets(bare_xl_cpu=30.0, service_xl_cpu=60.0)
    assert found["per"]["L"]["own_cpu_ms_per_resource"] == 0.01
    assert found["per"]["XL"]["own_cpu_ms_per_resource"] == 0.01
    assert found["per"]["XL"]["bare_cpu_ms_per_resource"] == 0.01


def test_parsing_growth_fails_the_total_target_but_not_the_own_one() -> None:
    # Total cost per resource rises L -> XL (60/3000 = 0.02 vs 11/700 = 0.0157), all of it in the bare part.
    found = _targets(bare_xl_cpu=30.0, service_xl_cpu=60.0)["targets"]
    total = found["cost per resource XL / L (distinct, worker CPU)"]
    own = found["own cost per resource XL / L (service minus bare, worker CPU)"]
    assert total["pass"] is False and total["value"] > 1.1
    assert own["pass"] is True and own["value"] == 1.0


def test_own_cost_growth_fails_its_target() -> None:
    found = _targets(bare_xl_cpu=12.0, service_xl_cpu=60.0)["targets"]  # own 48 ms: 0.016 per resource
    own = found["own cost per resource XL / L (service minus bare, worker CPU)"]
    assert own["pass"] is False and own["value"] == 1.6
