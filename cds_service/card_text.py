"""Text that goes into cards: record-derived values made safe for Markdown, units in clinical notation,
numbers in one format.

`safe_value` is THE function the renderer applies to every value a rule derived from the record (finding
values, evidence labels, values, dates and references) before it enters a card template: it caps the length,
removes control characters and line breaks, writes units as clinicians read them (×10⁹/L, µmol/L, never the
UCUM codes `10*9/L` or `{pill}`) and escapes everything Markdown or HTML would interpret (links, images,
headings, emphasis, tags, entities, bare URLs). Card templates themselves are trusted Markdown.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from functools import lru_cache
from types import MappingProxyType
from typing import Any

from .units import format_number

# Longest record-derived value shown on a card; longer text is cut with an ellipsis (a 4 MB string in a
# record must not make a 4 MB card).
MAX_VALUE_CHARS = 200

# UCUM codes and lab spellings -> clinical notation. Applied in order; each pattern is anchored so that it does
# not rewrite inside words. The first column is a literal every match of the pattern contains: text without it
# skips the pattern (most values, such as dates and references, contain no unit at all).
_UNIT_REWRITES: tuple[tuple[str, re.Pattern[str], str], ...] = tuple(
    (trigger, re.compile(pattern), replacement)
    for trigger, pattern, replacement in (
        ("10", r"(?<![\w.])(?:[x×]\s?)?10\s?[*^]\s?9\s?/\s?L\b", "×10⁹/L"),
        ("10", r"(?<![\w.])(?:[x×]\s?)?10\s?[*^]\s?3\s?/\s?(?:uL|µL|μL)(?![\w])", "×10³/µL"),
        ("10", r"(?<![\w.])(?:[x×]\s?)?10\s?[*^]\s?3\s?/\s?mm3\b", "×10³/mm³"),
        ("/uL", r"(?<![\w/])[Kk]/uL\b", "×10³/µL"),
        ("1.73", r"\{1\.73_m2\}|1\.73\s?m2\b", "1.73 m²"),
        ("/mm3", r"/mm3\b", "/mm³"),
        ("m[IU]", r"\bm\[IU\]", "mIU"),
        ("[IU]", r"\[IU\]", "IU"),
        ("{", r"\{([A-Za-z][A-Za-z0-9 _.'-]{0,30})\}", r"\1"),  # UCUM annotations: {pill} -> pill, {cells}/uL
        ("u", r"(?<![A-Za-z])u(mol|kat|L|g)\b", r"µ\1"),
        ("meq/L", r"(?<![A-Za-z])meq/L\b", "mEq/L"),
        ("ULN", r"(?<=\d) ?[xX] ?(?=ULN\b)", " × "),  # 3.2 x ULN -> 3.2 × ULN
    )
)

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff]")
_SPACE = re.compile(r"\s+")
# Every ASCII punctuation character Markdown (CommonMark + GFM) or HTML gives a meaning inline.
_SPECIAL_CHARS = r"\\`*_\[\]<>#!|~&$"
_MARKDOWN_SPECIAL = re.compile(f"([{_SPECIAL_CHARS}])")
# Characters that start a block (list, quote, heading underline, ordered list) when they open a line.
_BLOCK_START = re.compile(r"^([-+=]|\d{1,9}[.)])(?=\s|$)")
_BARE_LINK = re.compile(r"(?i)(https?|ftp|mailto|javascript|data)(:)|\b(www)(\.)")
# Text without any of these has nothing for _MARKDOWN_SPECIAL or _BARE_LINK to escape (a link needs ":" or "www.").
_MAY_NEED_ESCAPE = re.compile(f"[{_SPECIAL_CHARS}:]|(?i:www\\.)")


def clinical_units(text: str) -> str:
    """UCUM unit codes written as clinicians read them: "0.6 10*9/L" -> "0.6 ×10⁹/L", "1 {pill}" -> "1 pill"."""
    for trigger, pattern, replacement in _UNIT_REWRITES:
        if trigger in text:
            text = pattern.sub(replacement, text)
    return text


def plain(text: str, limit: int = MAX_VALUE_CHARS) -> str:
    """One line of text: control and format characters removed, whitespace collapsed, at most `limit` chars."""
    text = text[: limit * 4]
    if not (text.isascii() and text.isprintable() and "  " not in text):  # else nothing to normalise or remove
        text = _SPACE.sub(" ", _CONTROL.sub("", unicodedata.normalize("NFC", text)))
    text = text.strip()
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return text


def escape_markdown(text: str) -> str:
    """`text` as literal characters in CommonMark/GFM: no link, image, emphasis, heading, HTML or autolink."""
    if not _MAY_NEED_ESCAPE.search(text) and not _BLOCK_START.match(text):
        return text
    text = _MARKDOWN_SPECIAL.sub(r"\\\1", text)
    text = _BARE_LINK.sub(lambda m: f"{m.group(1) or m.group(3)}\\{m.group(2) or m.group(4)}", text)
    return _BLOCK_START.sub(lambda m: m.group(1)[:-1] + "\\" + m.group(1)[-1], text)


def safe_value(value: Any, limit: int = MAX_VALUE_CHARS) -> Any:
    """A record-derived value ready for a card template (strings escaped; numbers formatted; others as is)."""
    if type(value) is str and len(value) <= _CACHED_MAX:  # the common case, first
        return _safe_text(value, limit)
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, float):
        return format_number(value)
    if isinstance(value, int):
        return value
    text = str(value)
    if len(text) <= _CACHED_MAX:  # dates, positions, units and labels repeat across cards and requests
        return _safe_text(text, limit)
    return escape_markdown(clinical_units(plain(text, limit)))


_CACHED_MAX = 256


def plain_value(value: Any, limit: int = MAX_VALUE_CHARS) -> Any:
    """A record-derived value for plain text (a card's `summary`, which EHRs show as text, not Markdown): as
    `safe_value` (one line, capped, clinical units) but without Markdown escapes, which would show as
    backslashes ("<0.1" stays "<0.1"); what an EHR rendering it as HTML would take for a tag is defused."""
    if isinstance(value, str):
        return _TAG_OPEN.sub("‹", clinical_units(plain(value, limit)))
    return safe_value(value, limit)


_TAG_OPEN = re.compile(r"<(?=[A-Za-z/!?])")


@lru_cache(maxsize=8192)
def _safe_text(text: str, limit: int) -> str:
    return escape_markdown(clinical_units(plain(text, limit)))


class TemplateData(Mapping[str, Any]):
    """Read-only view of the protocol data for templates (`{p[labs][thresholds][anc_below]}`): numbers in the
    one card format (1.0 -> "1", 8.0 -> "8", 1.5 -> "1.5")."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        self._data = data

    def __getitem__(self, key: str) -> Any:
        return template_number(self._data[key])

    def __iter__(self) -> Any:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


def template_view(data: Mapping[str, Any]) -> Mapping[str, Any]:
    """What `TemplateData(data)` shows, computed once: read-only nested mappings with every number already in
    the card format, so that a template's `{p[a][b][c]}` costs dictionary look-ups only."""
    return MappingProxyType(
        {k: template_view(v) if isinstance(v, Mapping) else template_number(v) for k, v in data.items()}
    )


def template_number(value: Any) -> Any:
    if isinstance(value, Mapping):
        return TemplateData(value)
    if isinstance(value, float):
        return format_number(value)
    return value
