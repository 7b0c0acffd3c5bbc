"""Codes in raw FHIR JSON: codings, text, and NDCs in every form (clinical specification sections 10 and 12).

NDC forms: 10-digit (4-4-2, 5-3-2, 5-4-1) and 11-digit (5-4-2), with or without dashes; the product code
(first two segments) matches too. Every form is reduced to the 9-digit 5-4 product code: 55513-059-01 =
55513-0059-01 = 55513005901 -> 555130059. A 10-digit code without dashes is ambiguous (its segments are
unknown): each reading of it is tried.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from typing import Any

_DIGITS = re.compile(r"^\d+$")
_SEGMENT_WIDTHS = (5, 4, 2)


def codings(concept: Any) -> Iterator[tuple[str, str, str]]:
    """(system, code, display) of every well-formed coding of a CodeableConcept dict."""
    if not isinstance(concept, dict):
        return
    items = concept.get("coding")
    if not isinstance(items, list):
        return
    for coding in items:
        if isinstance(coding, dict):
            system = coding.get("system")
            code = coding.get("code")
            display = coding.get("display")
            yield (
                system if system.__class__ is str else "",
                code if code.__class__ is str else "",
                display if display.__class__ is str else "",
            )


def concept_text(concept: Any) -> str:
    """All human text of a CodeableConcept (text and coding displays), lower-cased."""
    if not isinstance(concept, dict):
        return ""
    parts = [concept.get("text")] + [d for _, _, d in codings(concept)]
    return " ".join(p for p in parts if isinstance(p, str)).lower()


@functools.lru_cache(maxsize=4096)  # the same product codes recur on every record of every request
def ndc_products(code: str) -> frozenset[str]:
    """The 9-digit (5-4) product codes an NDC in any form may denote (empty when it is not an NDC)."""
    text = code.strip()
    if "-" in text:
        parts = text.split("-")
        if len(parts) not in (2, 3) or not all(p and _DIGITS.match(p) for p in parts):
            return frozenset()
        widths = _SEGMENT_WIDTHS[: len(parts)]
        if any(len(p) > w for p, w in zip(parts, widths, strict=True)):
            return frozenset()
        if len(parts) == 3 and sum(len(p) for p in parts) not in (10, 11):
            return frozenset()
        return frozenset({parts[0].zfill(5) + parts[1].zfill(4)})
    if not _DIGITS.match(text):
        return frozenset()
    if len(text) == 11:
        return frozenset({text[:9]})
    if len(text) == 10:  # 4-4-2, 5-3-2 or 5-4-1 without dashes
        return frozenset({"0" + text[:8], text[:5] + "0" + text[5:8], text[:9]})
    if len(text) == 9:  # a 5-4 product code
        return frozenset({text})
    if len(text) == 8:  # a 4-4 or 5-3 product code
        return frozenset({"0" + text, text[:5] + "0" + text[5:]})
    return frozenset()
