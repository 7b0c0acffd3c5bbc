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


# --- rounds (--repeat): medians and paired ratios --------------------------------------------------------
from bench.run import merge_rounds  # noqa: E402


def _run(target: str, size: str, round_: int, rps: float, cpu_ms: float, **extra: Any) -> dict[str, Any]:
    run = _case(target, size, rps, cpu_ms)
    run.update(round=round_, requests=int(rps * 10), good=int(rps * 10), warmup={"bad": 0, "cards": 1},
               socket_errors={"timeout": 0}, peak_rss_mib=80.0, server_log_problems=0)  # fmt: skip
    run.update(extra)
    return run


def test_one_round_is_reported_as_measured() -> None:
    run = _run("bare", "M", 1, 700, 2.0)
    [case] = merge_rounds([run])
    assert case["rps"] == 700 and case["rounds"] == 1 and "rps_by_round" not in case


def test_rounds_merge_to_medians_counts_and_the_worst_case() -> None:
    runs = [
        _run("service-distinct", "M", 1, 200, 9.0, other_cpu_cores=0.05),
        _run("service-distinct", "M", 2, 260, 7.0, other_cpu_cores=0.30, peak_rss_mib=90.0),
        _run("service-distinct", "M", 3, 210, 8.5, other_cpu_cores=0.01, bad=2),
    ]
    runs[0]["memory_check"] = {"pass": True}
    [case] = merge_rounds(runs)
    assert case["rounds"] == 3
    assert case["rps"] == 210 and case["worker_cpu_ms_per_request"] == 8.5  # medians, not means
    assert case["requests"] == 6700 and case["bad"] == 2  # counts summed: a bad response of any round counts
    assert case["other_cpu_cores"] == 0.30 and case["peak_rss_mib"] == 90.0  # the worst round
    assert case["rps_by_round"] == [200, 260, 210] and case["cpu_ms_by_round"] == [9.0, 7.0, 8.5]
    assert case["python_loop_ms_by_round"] == [None, None, None]  # not timed in these made-up runs
    assert case["memory_check"] == {"pass": True}


def test_the_ratio_of_rounds_pairs_each_service_run_with_its_own_bare_run() -> None:
    # Round 3 ran on a slow spell of the machine: both servers lost throughput there.
    runs = [
        _run("bare", "M", 1, 800, 2.0), _run("service-distinct", "M", 1, 240, 6.0),  # 0.30
        _run("bare", "M", 2, 700, 2.0), _run("service-distinct", "M", 2, 245, 5.0),  # 0.35
        _run("bare", "M", 3, 400, 4.0), _run("service-distinct", "M", 3, 100, 16.0),  # 0.25
    ]  # fmt: skip
    results = evaluate(merge_rounds(runs), {"M": {"resources": 109}}, None)
    assert results["ratios"]["service-distinct"]["M"] == 0.3  # the median of 0.30, 0.35, 0.25
    assert round(240 / 700, 3) == 0.343  # what the ratio of the medians would have said, mixing rounds
    assert results["cpu_ratios"]["service-distinct"]["M"] == round(2.0 / 6.0, 3)  # median of 1/3, 2/5, 1/4


def test_a_bad_response_in_any_round_fails_the_run() -> None:
    runs = [_run("bare", "S", r, 2500, 0.6) for r in (1, 2)] + [
        _run("service-distinct", "S", 1, 600, 3.0),
        _run("service-distinct", "S", 2, 600, 3.0, bad=1),
    ]
    targets = {t["name"]: t for t in evaluate(merge_rounds(runs), {"S": {"resources": 13}}, None)["targets"]}
    assert targets["responses that were not 200 with a cards array (or no response)"]["pass"] is False


# --- the regression check compares runs of one machine -------------------------------------------------------
def _m_run(bare_rps: float, service_rps: float) -> list[dict[str, Any]]:
    return [_case("bare", "M", bare_rps, 2.0), _case("service-distinct", "M", service_rps, 8.0)]


def _regression(baseline_cases: list[dict[str, Any]], cases: list[dict[str, Any]]) -> dict[str, Any]:
    baseline = {"date": "2026-12-01T17:44:18Z", "git": {"commit": "e376810"}, "cases": baseline_cases,
                "ratios": {"service-distinct": {"M": round(baseline_cases[1]["rps"] / baseline_cases[0]["rps"], 3)}}}  # fmt: skip
    results = evaluate(cases, {"M": {"resources": 109}}, baseline)
    [check] = [t for t in results["targets"] if "vs previous results" in t["name"]]
    return {"check": check, "regression": results["regression"]}


def test_a_regression_on_the_same_machine_fails() -> None:
    found = _regression(_m_run(800, 280), _m_run(780, 200))  # bare -2.5 %: same machine; ratio 0.35 -> 0.256
    assert found["check"]["pass"] is False and found["regression"]["comparable"] is True
    assert found["check"]["value"] == -26.9


def test_no_regression_on_the_same_machine_passes() -> None:
    found = _regression(_m_run(800, 280), _m_run(820, 270))
    assert found["check"]["pass"] is True


def test_another_machine_is_reported_not_judged() -> None:
    # The bare app (same code) runs at half the throughput: another machine; the ratio moved with it.
    found = _regression(_m_run(2550, 880), _m_run(845, 204))
    assert found["check"]["pass"] is None and found["regression"]["comparable"] is False
    assert found["regression"]["bare_m_rps_change_pct"] == -66.9
    assert "not judged" in found["check"]["limit"]


def test_report_evaluate_judges_committed_results_again(tmp_path: Path) -> None:
    import orjson

    from bench import report

    committed = REPO_ROOT / "bench" / "results" / "results.json"
    (tmp_path / "results.json").write_bytes(committed.read_bytes())
    baseline = orjson.loads(committed.read_bytes())
    for case in baseline["cases"]:
        if case["target"] == "bare" and case["size"] == "M":
            case["rps"] *= 2  # the baseline's machine parsed twice as fast
    (tmp_path / "baseline.json").write_bytes(orjson.dumps(baseline))
    assert report.main(["--out", str(tmp_path), "--evaluate", "--baseline", str(tmp_path / "baseline.json")]) == 0
    judged = orjson.loads((tmp_path / "results.json").read_bytes())
    [row] = [t for t in judged["targets"] if "vs previous results" in t["name"]]
    assert row["pass"] is None and judged["regression"]["comparable"] is False
    assert "verdicts computed again" in (tmp_path / "results.md").read_text()
    assert "**Not comparable:**" in (tmp_path / "results.md").read_text()
