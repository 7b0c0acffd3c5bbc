"""Unit normalisation of laboratory quantities, driven by the protocol `units` table (spec section 8.3).

A quantity is converted to its analyte's canonical unit with the factor the protocol gives for its unit,
matched on `Quantity.code` (UCUM) first, then `Quantity.unit`, exactly after trimming. A unit the table does
not list is never guessed: the conversion reports a problem and the value stays unusable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .protocol import Protocol

# Short names of analytes as clinicians read them on cards (presentation only, no clinical content).
ANALYTE_LABELS: dict[str, str] = {
    "anc": "ANC",
    "hemoglobin": "hemoglobin",
    "platelets": "platelets",
    "alt": "ALT",
    "ast": "AST",
    "bilirubin": "total bilirubin",
    "sodium": "sodium",
    "potassium": "potassium",
    "uric_acid": "uric acid",
    "egfr": "eGFR",
    "hcg_quantitative": "beta-hCG",
}

# Significant digits kept after a conversion: removes floating-point noise (51.3 umol/L -> 3.0 mg/dL, not
# 2.9999999999999996) so that boundaries such as "5 x ULN exactly is not a hold" compare as written.
_SIGNIFICANT_DIGITS = 12


@dataclass(frozen=True)
class Conversion:
    """A quantity in the analyte's canonical unit; `value` is None and `problem` says why when unusable."""

    value: float | None
    unit: str  # canonical unit
    raw_value: str | None
    raw_unit: str | None
    problem: str | None = None


def analyte_label(analyte: str) -> str:
    return ANALYTE_LABELS.get(analyte, analyte.replace("_", " "))


def canonical_unit(protocol: Protocol, analyte: str) -> str:
    return str(protocol.section("units")[analyte]["canonical"])


def clean(x: float) -> float:
    """`x` rounded to 12 significant digits (conversion and ratio noise removed)."""
    if x == 0 or not math.isfinite(x):
        return x
    return float(f"{x:.{_SIGNIFICANT_DIGITS}g}")


def table_factor(factors: dict[str, Any], quantity: dict[str, Any]) -> tuple[float, str] | None:
    """(factor, the unit string matched) of a Quantity in a unit -> factor table, or None when not listed.

    `Quantity.code` (UCUM) is tried first, then `Quantity.unit`, each matched exactly after trimming.
    """
    for key in ("code", "unit"):
        raw = quantity.get(key)
        if isinstance(raw, str) and raw.strip() in factors:
            return float(factors[raw.strip()]), raw.strip()
    return None


def unit_factor(protocol: Protocol, analyte: str, quantity: dict[str, Any]) -> tuple[float, str] | None:
    """(factor to the canonical unit, the unit string matched) or None when the unit is not in the table."""
    return table_factor(protocol.section("units")[analyte]["factors"], quantity)


def raw_unit_of(quantity: dict[str, Any]) -> str | None:
    for key in ("unit", "code"):
        raw = quantity.get(key)
        if isinstance(raw, str) and raw.strip():
            return raw.strip()
    return None


def _raw_number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def to_canonical(protocol: Protocol, analyte: str, quantity: Any) -> Conversion:
    """Convert a FHIR Quantity dict of `analyte` to the canonical unit (or say why it cannot be)."""
    canonical = canonical_unit(protocol, analyte)
    if not isinstance(quantity, dict):
        return Conversion(None, canonical, None, None, "no value")
    raw = quantity.get("value")
    raw_value = None if raw is None else str(raw)
    raw_unit = raw_unit_of(quantity)
    number = _raw_number(raw)
    if raw is None:
        return Conversion(None, canonical, None, raw_unit, "no value")
    if number is None:
        return Conversion(None, canonical, raw_value, raw_unit, "value is not a number")
    comparator = quantity.get("comparator")
    if comparator:
        # "<0.5" is a limit, not a value: comparing it with a threshold could read an abnormal result as normal.
        return Conversion(
            None, canonical, f"{comparator}{raw_value}", raw_unit, f"reported as a limit ({comparator}{raw_value})"
        )
    matched = unit_factor(protocol, analyte, quantity)
    if matched is None:
        shown = raw_unit if raw_unit is not None else "no unit"
        return Conversion(None, canonical, raw_value, raw_unit, f"unit '{shown}' cannot be converted to {canonical}")
    factor, _ = matched
    return Conversion(clean(number * factor), canonical, raw_value, raw_unit)


def unit_display(unit: str) -> str:
    """A UCUM unit as clinicians write it: 10*9/L -> ×10⁹/L, mL/min/{1.73_m2} -> mL/min/1.73 m²."""
    from .card_text import clinical_units

    return clinical_units(unit)


def format_number(x: float) -> str:
    """A value with sensible precision: 3 decimals below 10, 2 below 100, 1 below 1000, else none."""
    magnitude = abs(x)
    decimals = 3 if magnitude < 10 else 2 if magnitude < 100 else 1 if magnitude < 1000 else 0
    text = f"{x:.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def format_multiple(multiple: float, threshold: float | None = None) -> str:
    """A multiple of the ULN with one decimal, or more when one decimal would hide that it passes `threshold`.

    5.004 x ULN against a threshold of 5 is shown as "5.004", never as "5.0".
    """
    for decimals in (1, 2, 3):
        text = f"{multiple:.{decimals}f}"
        if threshold is None or multiple <= threshold or float(text) > threshold:
            return text
    return f"{multiple:.4g}"


def format_quantity(value: float, unit: str, raw_value: str | None = None, raw_unit: str | None = None) -> str:
    """The canonical value, with the reported one when the number differs: "0.8 ×10⁹/L (reported 800 /µL)".

    A result reported in an equivalent unit (0.6 10*3/uL = 0.6 ×10⁹/L) is shown once.
    """
    shown = f"{format_number(value)} {unit_display(unit)}"
    if raw_unit is not None and raw_value is not None and raw_unit != unit and _differs(raw_value, value):
        shown += f" (reported {raw_value} {unit_display(raw_unit)})"
    return shown


def _differs(raw_value: str, value: float) -> bool:
    try:
        return clean(float(raw_value)) != clean(value)
    except ValueError:
        return True
