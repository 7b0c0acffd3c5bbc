"""The benchmark's request generators (bench/workload.py) produce valid order-sign requests of the intended
sizes, with a history consistent with the dose, that the service answers with cards (not errors)."""

from __future__ import annotations

import sys
from collections import Counter
from datetime import date
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # bench/ is not an installed package
    sys.path.insert(0, str(REPO_ROOT))

from bench.workload import PLANNED_DATE, SERVICE_ID, SIZES, BenchRequest, build, count_resources  # noqa: E402
from cds_service.engine import Engine  # noqa: E402
from cds_service.fhir_validation import validation_issues  # noqa: E402
from cds_service.hook_request import parse_hook_request  # noqa: E402
from cds_service.services import PREFETCH_KEYS, SERVICES_BY_ID  # noqa: E402
from cds_service.settings import Settings  # noqa: E402

# size -> (fewest, most) resources, tarlatamab doses given before, dose ordered (mg), weeks of labs
EXPECTED = {"S": ((5, 20), 0, 1, 1), "M": ((100, 120), 7, 10, 12), "L": ((650, 750), 27, 10, 52)}


@pytest.fixture(scope="module")
def requests_by_size() -> dict[str, BenchRequest]:
    return {size: build(size) for size in SIZES}


def _bundle_resources(body: dict[str, Any], key: str) -> list[dict[str, Any]]:
    return [entry["resource"] for entry in body["prefetch"][key]["entry"]]


@pytest.mark.parametrize("size", SIZES)
def test_size_and_shape(requests_by_size: dict[str, BenchRequest], size: str) -> None:
    request = requests_by_size[size]
    body = request.body
    (low, high), _, _, _ = EXPECTED[size]
    assert low <= request.resources <= high
    assert request.resources == count_resources(body)
    assert body["hook"] == "order-sign"
    assert set(body["prefetch"]) == set(PREFETCH_KEYS)
    assert body["prefetch"]["patient"]["resourceType"] == "Patient"
    for key in PREFETCH_KEYS[1:]:
        bundle = body["prefetch"][key]
        assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset"
        assert bundle["total"] == len(bundle["entry"])
    parsed = parse_hook_request(body, SERVICES_BY_ID[SERVICE_ID], Settings())
    assert parsed.patient_id == body["prefetch"]["patient"]["id"]
    ids = Counter(
        (r["resourceType"], r["id"])
        for r in [e["resource"] for e in body["context"]["draftOrders"]["entry"]]
        + [r for key in PREFETCH_KEYS[1:] for r in _bundle_resources(body, key)]
    )
    assert [k for k, n in ids.items() if n > 1] == []


def test_sizes_grow_and_bodies_are_reproducible(requests_by_size: dict[str, BenchRequest]) -> None:
    sizes = [len(requests_by_size[s].to_bytes()) for s in SIZES]
    assert sizes == sorted(sizes)
    assert 40_000 <= sizes[1] <= 160_000  # the M body is of the order of the issue's 56 KB request
    for size in SIZES:
        assert build(size).to_bytes() == requests_by_size[size].to_bytes()


@pytest.mark.parametrize("size", SIZES)
def test_history_is_consistent_with_the_dose(requests_by_size: dict[str, BenchRequest], size: str) -> None:
    body = requests_by_size[size].body
    _, given, dose_mg, weeks = EXPECTED[size]
    drafts = [e["resource"] for e in body["context"]["draftOrders"]["entry"]]
    tarla = [d for d in drafts if "tarlatamab" in d["medicationCodeableConcept"]["text"]]
    assert len(tarla) == 1
    dosage = tarla[0]["dosageInstruction"][0]
    assert dosage["doseAndRate"][0]["doseQuantity"]["value"] == dose_mg
    assert dosage["timing"]["event"] == [f"{PLANNED_DATE.isoformat()}T09:00:00Z"]

    administrations = _bundle_resources(body, "administrations")
    assert len(administrations) == given
    days = sorted(date.fromisoformat(a["effectiveDateTime"][:10]) for a in administrations)
    if days:
        doses = {a["dosage"]["dose"]["value"] for a in administrations if a["effectiveDateTime"][:10] != str(days[0])}
        first = next(a for a in administrations if a["effectiveDateTime"][:10] == str(days[0]))
        assert first["dosage"]["dose"]["value"] == 1 and doses == {10}  # step-up, then 10 mg
        gaps = [(b - a).days for a, b in pairwise(days)]
        assert gaps[:2] == [7, 7] and set(gaps[2:]) <= {14}  # C1D1, C1D8, C1D15, then every 14 days
        assert (PLANNED_DATE - days[-1]).days == 14  # the planned dose is the next one on schedule
    else:
        assert {d["id"].split("-")[1] for d in drafts} == {"tarla", "dexa", "nacl"}  # C1D1 with its companions

    labs = [o for o in _bundle_resources(body, "observations") if o.get("valueQuantity")]
    draws = {o["effectiveDateTime"][:10] for o in labs}
    assert len(draws) == weeks
    newest = max(date.fromisoformat(d) for d in draws)
    assert 0 <= (PLANNED_DATE - newest).days <= 3  # pre-dose labs within the protocol's window


@pytest.mark.parametrize("size", ["S", "M"])
def test_every_resource_is_valid_r4(requests_by_size: dict[str, BenchRequest], size: str) -> None:
    body = requests_by_size[size].body
    resources = [e["resource"] for e in body["context"]["draftOrders"]["entry"]] + [body["prefetch"]["patient"]]
    resources += [r for key in PREFETCH_KEYS[1:] for r in _bundle_resources(body, key)]
    problems = {r["id"]: validation_issues(r, r["id"]) for r in resources}
    assert {k: v for k, v in problems.items() if v} == {}


@pytest.mark.parametrize("size", SIZES)
def test_the_service_answers_with_cards(requests_by_size: dict[str, BenchRequest], size: str, tmp_path: Path) -> None:
    """A benchmark of errors is worthless: every size is a compliant order the engine evaluates."""
    from conftest import NOW

    engine = Engine(Settings(data_dir=tmp_path, now=NOW, audit_enabled=False))
    outcome = engine.handle(SERVICE_ID, requests_by_size[size].body)
    cards = outcome.body["cards"]
    assert isinstance(cards, list)
    topics = {c["source"]["topic"]["code"] for c in cards}
    # The history matches the ordered dose and the data are complete: no dose, schedule, lab or data problem.
    assert topics.isdisjoint({"dose", "schedule", "labs-missing", "data-quality"}), [c["summary"] for c in cards]
