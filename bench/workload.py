"""Realistic order-sign requests of three sizes for the benchmark (built with tests/fhir_builders.py).

* S: Cycle 1 Day 1 (1 mg step-up) with its dexamethasone and saline orders, no administration history,
  one pre-dose panel: a handful of resources.
* M: Cycle 4 Day 1 maintenance dose (10 mg) with its history: 7 administrations, 12 weeks of weekly CBC and
  liver panels, 20 other medication orders, a resolved Grade 1 CRS and a short problem list (~110 resources).
* L: Cycle 14 Day 1 a year into treatment: 52 weeks of weekly labs (CBC, liver, electrolytes, eGFR), every
  administration and its order, monthly refills of supportive medicines (~700 resources).
* XL: Cycle 40 Day 1, three years into treatment: 156 weeks of weekly extended panels plus a mid-week CBC and
  liver panel, every administration and its order, monthly refills (~3,000 resources): the scale check.

Workloads (how a body is sent, `bench/run.py`):

* repeated: the same body on every request (what a validation cache answers best);
* distinct: every request is another patient: the body is rewritten so that every resource in it (ids,
  references, patient, hookInstance) differs from every other request's (`distinct_bodies`);
* pair: each patient is sent twice, order-select then order-sign, as an EHR does while an order is composed
  and then signed (`select_sign_pairs`).

Every request carries all five prefetch keys as searchset Bundles, is planned for Monday 2026-11-23 and is
consistent with an evaluation time of 2026-11-21T09:00:00Z (`CDS_NOW`). Ids are deterministic, so a body is
byte-identical from run to run. `python -m bench.workload --out DIR` writes the three bodies as JSON files.
"""

from __future__ import annotations

import argparse
import random
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(REPO_ROOT / "tests"))

import fhir_builders as fb  # noqa: E402  (tests/fhir_builders.py: the project's realistic FHIR builders)

NOW = "2026-11-21T09:00:00Z"  # the benchmark's CDS_NOW (a Saturday)
PLANNED_DATE = date(2026, 11, 23)  # the planned administration date (Monday)
LAST_DRAW = date(2026, 11, 21)  # the pre-dose labs: drawn at 07:30 on the day of the request, 2 days before
SERVICE_ID = "tarlatamab-order-sign"
SIZES = ("S", "M", "L", "XL")
DEFAULT_SIZES = ("S", "M", "L")
WORKLOADS = ("repeated", "distinct", "pair")
CBC_LFT = ("anc", "hemoglobin", "platelets", "alt", "ast", "bilirubin")
EXTENDED_PANEL = (*CBC_LFT, "sodium", "potassium", "uric_acid", "egfr")
# analyte -> (normal value, relative spread) for the deterministic week-to-week variation
LAB_VALUES: dict[str, tuple[float, float]] = {
    "anc": (3.4, 0.25), "hemoglobin": (12.4, 0.06), "platelets": (212, 0.15), "alt": (24, 0.2),
    "ast": (27, 0.2), "bilirubin": (0.6, 0.2), "sodium": (139, 0.01), "potassium": (4.2, 0.05),
    "uric_acid": (5.1, 0.1), "egfr": (78, 0.06),
}  # fmt: skip
SUPPORTIVE = (  # (RxNorm, display, order text)
    ("26225", "ondansetron", "ondansetron 8 mg tablet, 1 tablet by mouth every 8 hours as needed for nausea"),
    ("40790", "pantoprazole", "pantoprazole 40 mg delayed-release tablet, 1 tablet by mouth daily"),
    ("161", "acetaminophen", "acetaminophen 500 mg tablet, 2 tablets by mouth every 6 hours as needed"),
    ("17767", "amlodipine", "amlodipine 5 mg tablet, 1 tablet by mouth daily"),
    ("83367", "atorvastatin", "atorvastatin 20 mg tablet, 1 tablet by mouth at bedtime"),
    ("6809", "metformin", "metformin 500 mg tablet, 1 tablet by mouth twice daily with meals"),
    ("10582", "levothyroxine", "levothyroxine 50 mcg tablet, 1 tablet by mouth daily before breakfast"),
    ("435", "albuterol", "albuterol 90 mcg/actuation inhaler, 2 puffs every 4 hours as needed"),
)


@dataclass(frozen=True)
class BenchRequest:
    size: str
    description: str
    body: dict[str, Any]

    @property
    def resources(self) -> int:
        return count_resources(self.body)

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.body)


def count_resources(body: dict[str, Any]) -> int:
    """FHIR resources in a request: the draft orders plus every prefetched resource (a Bundle counts its entries)."""
    total = len(body["context"].get("draftOrders", {}).get("entry", []))
    for value in body.get("prefetch", {}).values():
        if isinstance(value, dict) and value.get("resourceType") == "Bundle":
            total += len(value.get("entry", []))
        elif isinstance(value, dict):
            total += 1
    return total


# --- helpers ----------------------------------------------------------------------------------------
def _at(day: date, hour: int = 9, minute: int = 0) -> str:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _schedule(first: date, cycles: int) -> list[tuple[str, date, float]]:
    """(position, date, dose mg) of every dose from C1D1 through cycle `cycles` (days 1 and 15 after cycle 1)."""
    doses = [
        ("C1D1", first, 1.0),
        ("C1D8", first + timedelta(days=7), 10.0),
        ("C1D15", first + timedelta(days=14), 10.0),
    ]
    for cycle in range(2, cycles + 1):
        start = first + timedelta(days=28 * (cycle - 1))
        doses.append((f"C{cycle}D1", start, 10.0))
        doses.append((f"C{cycle}D15", start + timedelta(days=14), 10.0))
    return doses


def _weekly_labs(
    size: str, last_draw: date, weeks: int, analytes: tuple[str, ...], rng: random.Random
) -> list[dict[str, Any]]:
    """`weeks` weekly panels ending on `last_draw`, newest first (as `_sort=-date` returns them)."""
    out = []
    for week in range(weeks):
        drawn = _at(last_draw - timedelta(days=7 * week), 7, 30)
        for analyte in analytes:
            normal, spread = LAB_VALUES[analyte]
            value = normal if week == 0 else normal * (1 + rng.uniform(-spread, spread))
            digits = 0 if normal >= 100 else 1 if normal >= 10 else 2
            out.append(
                fb.lab(analyte, round(value, digits), drawn, oid=f"{size}-lab-{analyte.replace('_', '')}-{week}")
            )
    return out


def _medication_request(
    rid: str, rxnorm: str, display: str, text: str, authored: date, status: str = "active"
) -> dict[str, Any]:
    return {
        "resourceType": "MedicationRequest",
        "id": rid,
        "status": status,
        "intent": "order",
        "medicationCodeableConcept": {
            "coding": [{"system": fb.RXNORM, "code": rxnorm, "display": display}],
            "text": text,
        },
        "subject": {"reference": f"Patient/{fb.PATIENT_ID}"},
        "authoredOn": _at(authored, 10),
        "requester": {"reference": "Practitioner/onc-42", "display": "Dr. A. Lindqvist"},
        "dosageInstruction": [{"text": text}],
    }


def _given_orders(size: str, doses: list[tuple[str, date, float]]) -> list[dict[str, Any]]:
    """The completed tarlatamab order behind every dose given, and the premedication/hydration of C1D1 and C1D8."""
    out = []
    for position, day, mg in doses:
        out.append(fb.tarlatamab_order(_at(day), dose=mg, oid=f"{size}-tarla-order-{position}", status="completed"))
        if position in ("C1D1", "C1D8"):
            out.append(fb.dexamethasone_order(_at(day, 8), oid=f"{size}-dexa-{position}", status="completed"))
            out.append(fb.saline_order(_at(day, 10), oid=f"{size}-nacl-{position}", status="completed"))
    return out


def _administrations(size: str, doses: list[tuple[str, date, float]]) -> list[dict[str, Any]]:
    return [fb.administration(_at(day, 9, 5), dose=mg, aid=f"{size}-adm-{position}") for position, day, mg in doses]


def _platinum(size: str, first: date, cycles: int) -> list[dict[str, Any]]:
    out = []
    for cycle in range(cycles):
        resource = fb.platinum_request(_at(first + timedelta(days=21 * cycle), 10), "carboplatin")
        resource["id"] = f"{size}-carboplatin-{cycle + 1}"
        out.append(resource)
    return out


def _history_conditions(size: str, extra: int) -> list[dict[str, Any]]:
    problems = [
        (fb.SNOMED, "38341003", "Hypertensive disorder", "2015-03-10"),
        (fb.ICD10, "E11.9", "Type 2 diabetes mellitus without complications", "2018-06-21"),
        (fb.ICD10, "J44.9", "Chronic obstructive pulmonary disease, unspecified", "2016-01-14"),
        (fb.ICD10, "C79.31", "Secondary malignant neoplasm of brain", "2026-01-20"),
        (fb.ICD10, "E03.9", "Hypothyroidism, unspecified", "2020-09-02"),
        (fb.ICD10, "D63.0", "Anemia in neoplastic disease", "2026-02-11"),
        (fb.ICD10, "G62.9", "Polyneuropathy, unspecified", "2026-03-30"),
    ]
    return [
        fb.condition(system, code, display, onset, cid=f"{size}-cond-{i}")
        for i, (system, code, display, onset) in enumerate(problems[:extra])
    ]


def _sclc(size: str, onset: str = "2025-12-02") -> dict[str, Any]:
    resource = fb.sclc_condition(onset)
    resource["id"] = f"{size}-cond-sclc"
    return resource


def _request(
    size: str,
    *,
    drafts: list[dict[str, Any]],
    medications: list[dict[str, Any]],
    administrations: list[dict[str, Any]],
    observations: list[dict[str, Any]],
    conditions: list[dict[str, Any]],
) -> dict[str, Any]:
    return fb.hook_request(
        "order-sign",
        drafts=drafts,
        medications=medications,
        administrations=administrations,
        observations=observations,
        conditions=conditions,
        hook_instance=str(uuid.uuid5(uuid.NAMESPACE_URL, f"urn:tarlatamab-cds:bench:{size}")),
    )


# --- the three sizes --------------------------------------------------------------------------------
def small() -> BenchRequest:
    """C1D1: the 1 mg step-up dose with dexamethasone and saline, one pre-dose panel, no history."""
    planned = _at(PLANNED_DATE)
    drafts = [
        fb.tarlatamab_order(planned, dose=1, oid="S-tarla-order-C1D1"),
        fb.dexamethasone_order(_at(PLANNED_DATE, 8), oid="S-dexa-C1D1"),
        fb.saline_order(_at(PLANNED_DATE, 10), oid="S-nacl-C1D1"),
    ]
    drawn = _at(LAST_DRAW, 7, 30)
    observations = [fb.lab(a, LAB_VALUES[a][0], drawn, oid=f"S-lab-{a}") for a in (*CBC_LFT, "egfr")]
    body = _request(
        "S",
        drafts=drafts,
        medications=_platinum("S", date(2026, 6, 1), 1),
        administrations=[],
        observations=observations,
        conditions=[_sclc("S")],
    )
    return BenchRequest("S", "C1D1 step-up (1 mg), premedication and hydration orders, no history", body)


def medium() -> BenchRequest:
    """C4D1 maintenance 10 mg: 7 doses given, 12 weeks of CBC/LFT, 20 other medication orders."""
    rng = random.Random(20261123)
    first = PLANNED_DATE - timedelta(days=28 * 3)  # C1D1 = 2026-08-31
    doses = _schedule(first, 3)
    observations = _weekly_labs("M", LAST_DRAW, 12, CBC_LFT, rng)
    observations.append(fb.grade_observation("crs-grade", 1, _at(first + timedelta(days=1), 2), oid="M-crs-grade-1"))
    observations.append(fb.grade_observation("crs-grade", 0, _at(first + timedelta(days=2), 9), oid="M-crs-grade-2"))
    medications = _given_orders("M", doses)  # 7 tarlatamab + 4 premedication/hydration
    medications += _platinum("M", date(2026, 4, 6), 3)
    medications += [
        _medication_request(f"M-med-{rx}", rx, display, text, date(2026, 8, 20)) for rx, display, text in SUPPORTIVE[:6]
    ]
    conditions = [
        _sclc("M"),
        fb.crs_condition(1, _at(first + timedelta(days=1), 2), _at(first + timedelta(days=2), 9), cid="M-crs-1"),
        *_history_conditions("M", 4),
    ]
    body = _request(
        "M",
        drafts=[fb.tarlatamab_order(_at(PLANNED_DATE), dose=10, oid="M-tarla-order-C4D1")],
        medications=medications,
        administrations=_administrations("M", doses),
        observations=observations,
        conditions=conditions,
    )
    return BenchRequest("M", "C4D1 maintenance 10 mg with 7 doses of history and 12 weeks of labs", body)


def _long_course(
    size: str,
    *,
    seed: int,
    cycles: int,
    weeks: int,
    months: int,
    midweek: bool,
    platinum_from: date,
    sclc_onset: str,
) -> dict[str, Any]:
    """The body of a long treatment course: weekly extended labs for `weeks` weeks (and, with `midweek`, a
    mid-week CBC and liver panel), two graded CRS episodes, every administration and its order, monthly refills
    of the supportive medicines for `months` months; the order is the first dose of cycle `cycles` + 1."""
    rng = random.Random(seed)
    first = PLANNED_DATE - timedelta(days=28 * cycles)
    doses = _schedule(first, cycles)
    observations = _weekly_labs(size, LAST_DRAW, weeks, EXTENDED_PANEL, rng)
    if midweek:
        extra = _weekly_labs(size, LAST_DRAW - timedelta(days=3), weeks, CBC_LFT, rng)
        for resource in extra:
            resource["id"] = resource["id"].replace(f"{size}-lab-", f"{size}-midweek-")
        observations += extra
    for i, (kind, value, offset) in enumerate(
        [("crs-grade", 1, 1), ("crs-grade", 0, 2), ("ice-score", 10, 1), ("crs-grade", 2, 8), ("crs-grade", 0, 10),
         ("ice-score", 10, 8)]
    ):  # fmt: skip
        observations.append(
            fb.grade_observation(kind, value, _at(first + timedelta(days=offset), 6), oid=f"{size}-grade-{i}")
        )
    medications = _given_orders(size, doses)  # every tarlatamab order + 4 premedication/hydration
    medications += _platinum(size, platinum_from, 4)
    for month in range(months):
        authored = first + timedelta(days=30 * month)
        status = "active" if month == months - 1 else "completed"
        medications += [
            _medication_request(f"{size}-med-{rx}-{month}", rx, display, text, authored, status)
            for rx, display, text in SUPPORTIVE
        ]
    conditions = [
        _sclc(size, sclc_onset),
        fb.crs_condition(1, _at(first + timedelta(days=1), 2), _at(first + timedelta(days=2), 9), cid=f"{size}-crs-1"),
        fb.crs_condition(2, _at(first + timedelta(days=8), 1), _at(first + timedelta(days=10), 9), cid=f"{size}-crs-2"),
        *_history_conditions(size, 7),
    ]
    return _request(
        size,
        drafts=[fb.tarlatamab_order(_at(PLANNED_DATE), dose=10, oid=f"{size}-tarla-order-C{cycles + 1}D1")],
        medications=medications,
        administrations=_administrations(size, doses),
        observations=observations,
        conditions=conditions,
    )


def large() -> BenchRequest:
    """C14D1 a year into treatment (C1D1 2025-11-24): weekly extended labs for 52 weeks."""
    body = _long_course(
        "L",
        seed=20251124,
        cycles=13,
        weeks=52,
        months=12,
        midweek=False,
        platinum_from=date(2025, 8, 4),
        sclc_onset="2025-07-15",
    )
    return BenchRequest("L", "C14D1 a year into treatment: 52 weeks of weekly labs and all 27 doses", body)


def xlarge() -> BenchRequest:
    """C40D1 three years into treatment (C1D1 2023-12-18): weekly extended panels and a mid-week CBC and liver
    panel for 156 weeks."""
    body = _long_course(
        "XL",
        seed=20231218,
        cycles=39,
        weeks=156,
        months=37,
        midweek=True,
        platinum_from=date(2023, 8, 7),
        sclc_onset="2023-07-10",
    )
    return BenchRequest("XL", "C40D1 three years into treatment: 156 weeks of labs and all 79 doses", body)


BUILDERS: dict[str, Callable[[], BenchRequest]] = {"S": small, "M": medium, "L": large, "XL": xlarge}


def build(size: str) -> BenchRequest:
    return BUILDERS[size]()


# --- distinct patients -------------------------------------------------------------------------------
def _patient_variant(raw: str, size: str, hook_instance: str, n: int) -> bytes:
    """The body `raw` as patient number `n`: every id, reference, the patient and the hookInstance renamed,
    so that no resource of it is byte-identical to one of another patient's body."""
    tag = f"{size}p{n:06d}"
    return (
        raw.replace(fb.PATIENT_ID, f"{fb.PATIENT_ID}-{n:06d}")
        .replace(f'"{size}-', f'"{tag}-')
        .replace(f"/{size}-", f"/{tag}-")
        .replace(hook_instance, str(uuid.uuid5(uuid.NAMESPACE_URL, f"urn:tarlatamab-cds:bench:{tag}")))
        .encode()
    )


def order_select_body(request: BenchRequest) -> dict[str, Any]:
    """The same request as the order-select call that precedes order-sign (the tarlatamab draft selected)."""
    body = orjson.loads(request.to_bytes())
    body["hook"] = "order-select"
    drafts = [e["resource"] for e in body["context"]["draftOrders"]["entry"]]
    body["context"]["selections"] = [f"MedicationRequest/{d['id']}" for d in drafts if "tarla" in d["id"]][:1]
    body["hookInstance"] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"urn:tarlatamab-cds:bench:{request.size}:select"))
    return body


def distinct_bodies(request: BenchRequest, count: int, start: int = 0) -> list[bytes]:
    """`count` order-sign bodies of `request`'s shape, each for another patient (numbers start..start+count-1)."""
    raw = request.to_bytes().decode()
    return [_patient_variant(raw, request.size, request.body["hookInstance"], n) for n in range(start, start + count)]


def select_sign_pairs(request: BenchRequest, count: int) -> list[tuple[str, bytes]]:
    """(hook, body) for `count` patients: each patient's order-select call, then its order-sign call."""
    sign = request.to_bytes().decode()
    select_body = order_select_body(request)
    select = orjson.dumps(select_body).decode()
    out: list[tuple[str, bytes]] = []
    for n in range(count):
        out.append(("order-select", _patient_variant(select, request.size, select_body["hookInstance"], n)))
        out.append(("order-sign", _patient_variant(sign, request.size, request.body["hookInstance"], n)))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the benchmark's order-sign request bodies")
    parser.add_argument("--out", type=Path, required=True, help="folder for bench-S.json, bench-M.json, bench-L.json")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for size in SIZES:
        request = build(size)
        raw = request.to_bytes()
        path = args.out / f"bench-{size}.json"
        path.write_bytes(raw)
        print(f"{path}: {request.resources} resources, {len(raw) / 1024:.1f} KiB - {request.description}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
