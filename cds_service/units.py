"""How laboratory units and numbers are shown to clinicians (presentation only).

Conversion lives in `reading.quantities` (the one converter); this module only names analytes and formats
values, units and multiples of the ULN for cards.
"""

from __future__ import annotations

from .protocol import Protocol
from .reading.quantities import clean

__all__ = [
    "ANALYTE_LABELS",
    "analyte_label",
    "canonical_unit",
    "clean",
    "format_multiple",
    "format_number",
    "format_quantity",
    "unit_display",
]

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

def analyte_label(analyte: str) -> str:
    return ANALYTE_LABELS.get(analyte, analyte.replace("_", " "))


def canonical_unit(protocol: Protocol, analyte: str) -> str:
    return str(protocol.section("units")[analyte]["canonical"])



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
