"""FHIR Quantities: unit matching, comparators and conversion with the protocol's unit tables.

Spec/protocol.md section 12: `Quantity.code` with system UCUM is matched case-sensitively (UCUM is a
case-sensitive code system: "Mg" is a megagram, never a milligram); `Quantity.unit` (free text) is matched
case-insensitively ("MG", "Mg" = mg). A value with a comparator ("<0.1") keeps its bound and comparator: the
caller decides whether the bound decides its threshold (`decides_below`, `decides_above`).

This is the only unit converter of the service: laboratory results, doses, volumes and rates all use it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..value_types import quick_init

UCUM = "http://unitsofmeasure.org"
COMPARATORS = frozenset({"<", "<=", ">", ">="})

# Significant digits kept after a conversion: removes floating-point noise (51.3 umol/L -> 3.0 mg/dL, not
# 2.9999999999999996) so that boundaries such as "5 x ULN exactly is not a hold" compare as written.
_SIGNIFICANT_DIGITS = 12


def clean(x: float) -> float:
    """`x` rounded to 12 significant digits (conversion and ratio noise removed)."""
    if x == 0 or not math.isfinite(x):
        return x
    if (x.__class__ is int or x.is_integer()) and -1e12 < x < 1e12:
        return float(x)  # at most 12 digits already: nothing to round (and no string round trip)
    return float(f"{x:.{_SIGNIFICANT_DIGITS}g}")


# Relative distance from a limit beyond which `clean` (which moves a number by less than 1e-11 of itself)
# cannot change how the number compares with that limit.
_CLEAN_MARGIN = 1e-9


def clean_near(x: float, limit: float) -> float:
    """`x` as `clean` gives it wherever it matters for comparing it with `limit`: rounded only when close to
    the limit (the rounding is the costly part; far from the limit the comparison is the same without it)."""
    if abs(x - limit) <= _CLEAN_MARGIN * abs(limit):
        return clean(x)
    return x


def number_text(value: float) -> str:
    """A number as a clinician writes it (10, 0.5, 1000)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _text(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def raw_unit_of(quantity: Mapping[str, Any]) -> str | None:
    """The unit as written for a clinician: `unit` text, else the `code`."""
    return _text(quantity.get("unit")) or _text(quantity.get("code"))


def unit_factor(factors: Mapping[str, Any], quantity: Mapping[str, Any]) -> tuple[float, str] | None:
    """(factor, the table unit matched) of a Quantity in a unit -> factor table; None when not listed.

    A code with system UCUM decides alone, case-sensitively (never guessed from the text). A code of
    another or no system is tried exactly; then the free-text unit, exactly and then case-insensitively (an
    ambiguous case-insensitive match, two table units with different factors, is no match).
    """
    code, system = _text(quantity.get("code")), quantity.get("system")
    if code is not None:
        if code in factors:
            return float(factors[code]), code
        if system == UCUM:
            return None
    unit = _text(quantity.get("unit"))
    if unit is None:
        return None
    if unit in factors:
        return float(factors[unit]), unit
    folded = [(k, float(v)) for k, v in factors.items() if str(k).casefold() == unit.casefold()]
    if folded and len({v for _, v in folded}) == 1:
        return folded[0][1], folded[0][0]
    return None


@quick_init
@dataclass(frozen=True, slots=True)
class Converted:
    """A Quantity converted with a unit table. `value` is None and `problem` says why when unusable.

    With a comparator, `value` is the converted bound ("<0.1" -> value 0.1, comparator "<").
    """

    value: float | None
    comparator: str | None
    raw_value: str | None
    raw_unit: str | None
    problem: str | None = None

    @property
    def shown(self) -> str:
        if self.raw_value is None:
            return "no value"
        return f"{self.comparator or ''}{self.raw_value} {self.raw_unit or '(no unit)'}"


def as_written(raw: Any) -> str:
    """A value that is not a number, as a clinician can be shown it: text as written, else its JSON kind (never
    the dump of a structure)."""
    if isinstance(raw, str):
        return raw
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, int | float):
        return number_text(raw)
    return "a list" if isinstance(raw, list) else "an object" if isinstance(raw, Mapping) else type(raw).__name__


def convert(quantity: Any, factors: Mapping[str, Any], target: str = "") -> Converted:
    """Convert a FHIR Quantity dict with a unit -> factor table (`target` names the unit in problems)."""
    fast = _convert_plain(quantity, factors)
    if fast is not None:
        return fast
    if not isinstance(quantity, Mapping):
        return Converted(None, None, None, None, "no value")
    raw = quantity.get("value")
    raw_unit = raw_unit_of(quantity)
    if raw is None:
        return Converted(None, None, None, raw_unit, "no value")
    number = _number(raw)
    raw_value = number_text(number) if number is not None else as_written(raw)
    if number is None:
        return Converted(None, None, raw_value, raw_unit, "value is not a number")
    comparator = quantity.get("comparator")
    if comparator is not None and (not isinstance(comparator, str) or comparator not in COMPARATORS):
        return Converted(None, None, raw_value, raw_unit, "the comparator is not one of <, <=, >, >=")
    if raw_unit is None:
        return Converted(None, comparator, raw_value, None, "no unit stated")
    matched = unit_factor(factors, quantity)
    if matched is None:
        into = f" to {target}" if target else ""
        return Converted(None, comparator, raw_value, raw_unit, f"the unit '{raw_unit}' cannot be converted{into}")
    return Converted(clean(number * matched[0]), comparator, raw_value, raw_unit)


def _convert_plain(quantity: Any, factors: Mapping[str, Any]) -> Converted | None:
    """The common case, read without the general path: a finite number, no comparator, a code (already
    trimmed) listed in the table. None for anything else: `convert` then reads it in full, with the same result."""
    if quantity.__class__ is not dict or quantity.get("comparator") is not None:
        return None
    raw, code = quantity.get("value"), quantity.get("code")
    if (raw.__class__ is not float and raw.__class__ is not int) or code.__class__ is not str:
        return None
    factor = factors.get(code)
    if factor is None or not code or code.strip() != code or not math.isfinite(raw):
        return None
    unit = quantity.get("unit")
    shown = unit.strip() if unit.__class__ is str else ""
    number = float(raw)
    return Converted(clean(number * float(factor)), None, number_text(number), shown or code)


def decides_below(value: float, comparator: str | None, threshold: float) -> bool | None:
    """Whether the true value is below `threshold`; None when a comparator's bound does not decide it."""
    if comparator is None:
        return value < threshold
    if comparator == "<":
        return True if value <= threshold else None
    if comparator == "<=":
        return True if value < threshold else None
    # ">" / ">=": the true value is at least the bound
    return False if value >= threshold else None


def decides_above(value: float, comparator: str | None, threshold: float) -> bool | None:
    """Whether the true value is above `threshold`; None when a comparator's bound does not decide it."""
    if comparator is None:
        return value > threshold
    if comparator == ">":
        return True if value >= threshold else None
    if comparator == ">=":
        return True if value > threshold else None
    # "<" / "<=": the true value is at most the bound
    return False if value <= threshold else None
