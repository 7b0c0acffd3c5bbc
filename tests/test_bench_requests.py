"""The benchmark's request generators (bench/workload.py) produce valid order-sign requests of the intended
sizes, with a history consistent with the dose, that the service answers with cards (not errors)."""

from __future__ import annotations

import hashlib
import sys
from collections import Counter
from datetime import date
from itertools import pairwise
from pathlib import Path
from typing import Any

import orjson
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # bench/ is not an installed package
    sys.path.insert(0, str(REPO_ROOT))

from bench.workload import (  # noqa: E402
    PLANNED_DATE,
    SERVICE_ID,
    SIZES,
    BenchRequest,
    build,
    count_resources,
    distinct_bodies,
    select_sign_pairs,
)
from cds_service.engine import Engine  # noqa: E402
from cds_service.fhir_validation import validation_issues  # noqa: E402
from cds_service.hook_request import parse_hook_request  # noqa: E402
from cds_service.services import PREFETCH_KEYS, SERVICES_BY_ID  # noqa: E402
from cds_service.settings import Settings  # noqa: E402

# size -> (fewest, most) resources, tarlatamab doses given before, dose ordered (mg), days with lab draws
EXPECTED = {
    "S": ((5, 20), 0, 1, 1),
    "M": ((100, 120), 7, 10, 12),
    "L": ((650, 750), 27, 10, 52),
    "XL": ((2800, 3200), 79, 10, 2 * 156),  # weekly extended panel and a mid-week CBC + liver panel
}


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


def _resource_digests(body: dict[str, Any]) -> set[bytes]:
    resources = [e["resource"] for e in body["context"]["draftOrders"]["entry"]] + [body["prefetch"]["patient"]]
    resources += [r for key in PREFETCH_KEYS[1:] for r in _bundle_resources(body, key)]
    return {hashlib.blake2b(orjson.dumps(r), digest_size=16).digest() for r in resources}


@pytest.mark.parametrize("size", ["S", "M"])
def test_distinct_patients_share_no_resource(requests_by_size: dict[str, BenchRequest], size: str) -> None:
    """The distinct workload defeats any cache keyed by a resource's content: no resource of one patient's
    body is byte-identical to a resource of another's (or of the repeated body)."""
    request = requests_by_size[size]
    bodies = [orjson.loads(raw) for raw in distinct_bodies(request, 3)]
    seen = _resource_digests(request.body)
    for body in bodies:
        digests = _resource_digests(body)
        assert len(digests) == request.resources  # every resource (drafts, Patient, bundles) distinct
        assert digests.isdisjoint(seen)
        seen |= digests
    assert len({b["context"]["patientId"] for b in bodies}) == 3
    assert len({b["hookInstance"] for b in bodies}) == 3
    assert distinct_bodies(request, 2, start=1)[0] == distinct_bodies(request, 2)[1]  # reproducible numbering


def _card_shape(outcome_body: dict[str, Any]) -> list[tuple[str, str]]:
    return sorted((c["source"]["topic"]["code"], c["indicator"]) for c in outcome_body["cards"])


@pytest.mark.parametrize("size", ["S", "M"])
def test_a_distinct_patient_and_its_pair_get_the_original_cards(
    requests_by_size: dict[str, BenchRequest], size: str, tmp_path: Path
) -> None:
    from conftest import NOW

    engine = Engine(Settings(data_dir=tmp_path, now=NOW, audit_enabled=False))
    request = requests_by_size[size]
    expected = _card_shape(engine.handle(SERVICE_ID, request.body).body)
    assert expected
    variant = orjson.loads(distinct_bodies(request, 1, start=7)[0])
    assert _card_shape(engine.handle(SERVICE_ID, variant).body) == expected

    (select_hook, select_raw), (sign_hook, sign_raw) = select_sign_pairs(request, 1)
    assert (select_hook, sign_hook) == ("order-select", "order-sign")
    select, sign = orjson.loads(select_raw), orjson.loads(sign_raw)
    assert select["context"]["patientId"] == sign["context"]["patientId"]
    drafts = {e["resource"]["id"] for e in select["context"]["draftOrders"]["entry"]}
    assert set(select["context"]["selections"]) <= {f"MedicationRequest/{d}" for d in drafts}
    assert _card_shape(engine.handle(SERVICE_ID, sign).body) == expected
    # A compliant order while it is composed: no problem to show, and nothing louder than at order-sign.
    answered = engine.handle("tarlatamab-order-select", select).body["cards"]
    assert all(c["indicator"] == "info" and c["source"]["topic"]["code"] == "monitoring" for c in answered)
