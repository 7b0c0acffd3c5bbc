"""Unit normalisation (clinical specification section 8.3): every accepted unit, and refusal of the rest."""

from __future__ import annotations

import pytest

from cds_service.facts.labs import convert_lab as to_canonical
from cds_service.protocol import Protocol
from cds_service.units import clean, format_multiple, format_number, format_quantity


def q(value: object, code: str | None = None, unit: str | None = None, **extra: object) -> dict[str, object]:
    out: dict[str, object] = {"value": value}
    if code is not None:
        out["code"] = code
        out["system"] = "http://unitsofmeasure.org"
    if unit is not None:
        out["unit"] = unit
    out.update(extra)
    return out


# (analyte, quantity, expected value in the canonical unit) -- factors from spec 8.3:
# 1 x 10^9/L = 1 x 10^3/uL = 1000/uL; g/dL = mmol/L x 1.611; mg/dL = umol/L / 17.1; U/L = ukat/L x 60.
CONVERTIBLE = [
    ("anc", q(1.0, "10*9/L"), 1.0),
    ("anc", q(1.0, "10*3/uL"), 1.0),
    ("anc", q(1.0, unit="K/uL"), 1.0),
    ("anc", q(1000, "/uL"), 1.0),
    ("anc", q(990, "/uL"), 0.99),
    ("anc", q(1000, unit="/mm3"), 1.0),
    ("anc", q(1500, unit="cells/uL"), 1.5),
    ("platelets", q(49000, "/uL"), 49.0),
    ("platelets", q(50, "10*9/L"), 50.0),
    ("hemoglobin", q(8.0, "g/dL"), 8.0),
    ("hemoglobin", q(80, "g/L"), 8.0),
    ("hemoglobin", q(79, "g/L"), 7.9),
    ("hemoglobin", q(5.0, "mmol/L"), 5.0 * 1.611),
    ("bilirubin", q(1.2, "mg/dL"), 1.2),
    ("bilirubin", q(51.3, "umol/L"), 3.0),
    ("bilirubin", q(171, unit="µmol/L"), 10.0),
    ("alt", q(40, "U/L"), 40.0),
    ("alt", q(40, unit="IU/L"), 40.0),
    ("ast", q(3.5, "ukat/L"), 210.0),
    ("sodium", q(135, unit="mEq/L"), 135.0),
    ("hcg_quantitative", q(25, "m[IU]/mL"), 25.0),
]


@pytest.mark.parametrize(("analyte", "quantity", "expected"), CONVERTIBLE)
def test_accepted_units_convert_to_the_canonical_unit(
    protocol: Protocol, analyte: str, quantity: dict, expected: float
) -> None:
    converted = to_canonical(protocol, analyte, quantity)
    assert converted.problem is None
    assert converted.value == pytest.approx(expected, rel=1e-9)


def test_conversion_noise_is_removed_at_boundaries(protocol: Protocol) -> None:
    # 51.3 umol/L is exactly 3.0 mg/dL: it must compare equal to the 3 x ULN boundary, not 2.9999999999999996.
    assert to_canonical(protocol, "bilirubin", q(51.3, "umol/L")).value == 3.0
    assert to_canonical(protocol, "anc", q(990, "/uL")).value == 0.99
    assert clean(0.1 + 0.2) == 0.3


def test_code_is_matched_before_unit(protocol: Protocol) -> None:
    # The UCUM code says 10*3/uL; the free-text unit is a local spelling the table does not know.
    converted = to_canonical(protocol, "anc", q(2.5, "10*3/uL", unit="thou/cmm"))
    assert converted.value == 2.5
    # Without a known code of another system the unit text is used.
    local = {"value": 2500, "unit": "/uL", "system": "urn:lab:units", "code": "local-code"}
    assert to_canonical(protocol, "anc", local).value == 2.5
    # A UCUM code the table does not list decides alone (section 12: UCUM codes are never guessed).
    assert to_canonical(protocol, "anc", q(2500, "local-code", unit="/uL")).value is None


UNUSABLE = [
    ("anc", q(1.2, unit="cells"), "cannot be converted"),
    ("anc", q(1.2), "no unit"),
    ("hemoglobin", q(12, "g/mL"), "cannot be converted"),
    ("bilirubin", q(20, "mmol/L"), "cannot be converted"),
    ("alt", q(None, "U/L"), "no value"),
    ("alt", q("45", "U/L"), "not a number"),
    ("alt", q(True, "U/L"), "not a number"),
    ("anc", None, "no value"),
]


@pytest.mark.parametrize(("analyte", "quantity", "why"), UNUSABLE)
def test_unconvertible_quantities_are_unusable_never_normal(
    protocol: Protocol, analyte: str, quantity: dict | None, why: str
) -> None:
    converted = to_canonical(protocol, analyte, quantity)
    assert converted.value is None
    assert converted.problem is not None and why in converted.problem


@pytest.mark.parametrize(
    ("multiple", "threshold", "shown"),
    [(7.5, 5, "7.5"), (5.04, 5, "5.04"), (5.004, 5, "5.004"), (20.01, 20, "20.01"), (3.3333, None, "3.3")],
)
def test_multiples_never_look_like_the_boundary_they_pass(multiple: float, threshold: float | None, shown: str) -> None:
    assert format_multiple(multiple, threshold) == shown


def test_display_of_values() -> None:
    assert format_number(0.99) == "0.99"
    assert format_number(212.0) == "212"
    assert format_number(3.50877192982) == "3.509"
    assert format_quantity(0.8, "10*9/L", "800", "/uL") == "0.8 ×10⁹/L (reported 800 /µL)"
    # An equivalent unit with the same number is shown once, in clinical notation (never 10*3/uL).
    assert format_quantity(0.6, "10*9/L", "0.6", "10*3/uL") == "0.6 ×10⁹/L"
    assert format_quantity(24.0, "U/L", "24", "U/L") == "24 U/L"
