"""The request path's fast paths give exactly what the general code gives (issue: speed on real traffic).

Each fast path is checked against the general path it short-cuts, over every combination of the shapes that
decide it (a fast path that answered differently would change a card):
- `reading.quantities.convert`: the common Quantity (a finite number, no comparator, a listed, trimmed code).
- `reading.quantities.clean`: whole numbers skip the string round trip.
- `hook_request.json_depth_exceeds`: bounded recursion below its limit, an explicit stack above it.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from cds_service.hook_request import json_depth_exceeds
from cds_service.reading import quantities

FACTORS = {"mg": 1, "g": 1000, "10*9/L": 1.0, "U/L": 1, "umol/L": 0.0585, " mg": 5}
VALUES: list[Any] = [1, 0, -2, 1.5, 0.1, 2.9999999999999996, float("nan"), float("inf"), True, "1", None, [], 10**20]
CODES: list[Any] = ["mg", "g", "MG", " mg", "mg ", "", None, 5, "umol/L", "x"]
UNITS: list[Any] = ["mg", " MG ", "", "   ", None, 3, "U/L"]
SYSTEMS: list[Any] = ["http://unitsofmeasure.org", None, "other"]
COMPARATORS: list[Any] = [None, "<", ">=", "x"]


def _general(quantity: Any, monkeypatch: pytest.MonkeyPatch) -> quantities.Converted:
    with monkeypatch.context() as patch:
        patch.setattr(quantities, "_convert_plain", lambda *_: None)
        return quantities.convert(quantity, FACTORS, "mg")


def test_the_plain_quantity_path_agrees_with_the_general_one(monkeypatch: pytest.MonkeyPatch) -> None:
    fast_answers = 0
    for value, code, unit, system, comparator in itertools.product(VALUES, CODES, UNITS, SYSTEMS, COMPARATORS):
        quantity: dict[str, Any] = {"value": value, "code": code, "unit": unit, "system": system}
        if comparator is not None:
            quantity["comparator"] = comparator
        for absent in (None, "value", "code", "unit", "system"):
            shape = {k: v for k, v in quantity.items() if k != absent}
            fast = quantities._convert_plain(shape, FACTORS)
            fast_answers += fast is not None
            assert quantities.convert(shape, FACTORS, "mg") == _general(shape, monkeypatch), shape
    assert fast_answers > 100  # the fast path is taken, not only skipped


@pytest.mark.parametrize(
    "quantity",
    [
        {"value": 1.5, "unit": "mg", "system": "http://unitsofmeasure.org", "code": "mg"},
        {"value": 2, "unit": "g", "code": "g"},  # converted: 2000 mg
        {"value": 51.3, "unit": "umol/L", "code": "umol/L"},  # conversion noise removed
        {"value": 1, "unit": "  ", "code": "mg"},  # a blank unit text: the code is shown
    ],
)
def test_the_plain_path_is_taken_for_the_common_shapes(quantity: dict[str, Any]) -> None:
    fast = quantities._convert_plain(quantity, FACTORS)
    assert fast is not None and fast.problem is None


@pytest.mark.parametrize("x", [0.0, 1.0, -3.0, 5, 250.0, 999_999_999_999.0, 1e12, 1e15, 12345678901234.0, 0.5,
                               2.9999999999999996, 0.30000000000000004, -7.25e-9, float("inf")])  # fmt: skip
def test_clean_whole_numbers_skip_the_round_trip_with_the_same_result(x: float) -> None:
    expected = x if x == 0 or x in (float("inf"), float("-inf")) else float(f"{x:.12g}")
    assert quantities.clean(x) == expected and isinstance(quantities.clean(x), float)


def _nested(depth: int) -> Any:
    """A value `depth` levels deep, alternating objects and lists, with leaves beside every level."""
    value: Any = "leaf"
    for level in range(depth):
        value = {"x": value, "n": 1} if level % 2 else [value, None, 2.5]
    return value


@pytest.mark.parametrize("limit", [0, 1, 2, 10, 64, 128, 129, 400])
def test_depth_check_is_exact_at_every_limit(limit: int) -> None:
    for depth in range(0, min(limit + 3, 140)):
        assert json_depth_exceeds(_nested(depth), limit) is (max(depth, 1) > limit), (depth, limit)


def test_depth_check_of_hostile_nesting_never_recurses_past_its_limit() -> None:
    hostile: Any = []
    for _ in range(50_000):  # far beyond Python's recursion limit
        hostile = [hostile]
    assert json_depth_exceeds(hostile, 64) is True
    assert json_depth_exceeds(hostile, 400) is True  # the explicit stack


def test_depth_check_descends_into_container_subclasses() -> None:
    class Record(dict):  # type: ignore[type-arg]
        pass

    assert json_depth_exceeds(Record(a=Record(b=[1])), 2) is True
    assert json_depth_exceeds(Record(a=Record(b=[1])), 3) is False


def test_medication_kinds_memo_never_conflates_different_concepts(protocol: Any) -> None:
    """`MedicationIndex` remembers kinds by a concept's text and codings within a request: the same product
    written again is recognised from the memo; a concept differing in any coding or in its text is read anew."""
    from cds_service.reading.medications import MedicationIndex, concept_kinds

    ndc = "http://hl7.org/fhir/sid/ndc"

    def order(text: str | None, *coding: tuple[str, str, str]) -> dict[str, Any]:
        concept: dict[str, Any] = {"coding": [{"system": s, "code": c, "display": d} for s, c, d in coding]}
        if text is not None:
            concept["text"] = text
        return {"resourceType": "MedicationRequest", "medicationCodeableConcept": concept}

    variants = [
        order("tarlatamab-dlle 1 mg", (ndc, "55513-059-01", "IMDELLTRA 1 mg kit")),
        order("tarlatamab-dlle 1 mg", (ndc, "55513-059-01", "IMDELLTRA 1 mg kit")),  # the same again
        order(None, (ndc, "55513-059-01", "IMDELLTRA 1 mg kit")),
        order("dexamethasone 8 mg IV"),
        order("carboplatin AUC 5"),
        order("sodium chloride 0.9%", (ndc, "00000-000-00", "")),
        order("sodium chloride 0.9%"),
        order("unknown"),
    ]
    index = MedicationIndex(protocol)
    for resource in variants + variants[::-1]:
        assert index.kinds(resource) == concept_kinds(resource["medicationCodeableConcept"], protocol)
    assert "tarlatamab" in index.kinds(variants[0]) and "dexamethasone" in index.kinds(variants[3])


def test_depth_check_is_not_fooled_by_brackets_inside_strings() -> None:
    # The count of "{" and "[" in the JSON text only ever over-counts: brackets in strings send the check to the
    # walk, never past it.
    text = "]}" * 100
    assert json_depth_exceeds({"a": [{"b": text}]}, 3) is False
    assert json_depth_exceeds({"a": [{"b": [text]}]}, 3) is True
    assert json_depth_exceeds({"a": "[{" * 100}, 1) is False
    assert json_depth_exceeds({"a": {"b": "[{" * 100}}, 1) is True
