"""Change impact by replay: the cards a corpus of requests gets under the current protocol and under a
candidate protocol (and card wording), and what differs.

Both sides run through `Engine.handle`, the code path of the HTTP endpoint, at one fixed evaluation time.
Cards are matched by a stable identity, never by uuid or wording: the rule id, the draft order the card
acts on (the `MedicationRequest/<id>` its suggestions name, when they name one), and the card's rank among
cards of that rule and order. A matched card has changed when its indicator, topic, summary, detail or
suggestions differ (the protocol version quoted in a card's detail is not a change).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from ..engine import Engine
from ..errors import ServiceError
from ..hook_request import raise_for_depth
from ..services import SERVICES

HOOK_TO_SERVICE = {s.hook: s.id for s in SERVICES}
COMPARED_FIELDS = ("indicator", "topic", "summary", "detail", "suggestions")
_VERSION_MARK = "{protocol version}"


class CompareError(Exception):
    """A request file cannot be read or does not name a service: the comparison cannot be trusted."""


@dataclass(frozen=True)
class CardView:
    """What a clinician sees of one card, reduced to the compared fields."""

    rule_id: str
    order: str  # the draft order id the card acts on, or "" for a card about the patient or the request
    rank: int  # 1 for the first card of this rule and order, 2 for the second...
    indicator: str
    topic: str
    summary: str
    detail: str
    suggestions: tuple[str, ...]  # canonical JSON of each suggestion without uuids

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.rule_id, self.order, self.rank)

    def as_json(self) -> dict[str, Any]:
        return {
            "indicator": self.indicator,
            "topic": self.topic,
            "summary": self.summary,
            "suggestions": [orjson.loads(s)["label"] for s in self.suggestions],
        }


@dataclass(frozen=True)
class Answer:
    """One side's answer to one request: HTTP status and cards (status 200) or the error summary."""

    status: int
    cards: tuple[CardView, ...] = ()
    error: str | None = None


@dataclass(frozen=True)
class CardChange:
    kind: str  # "appears", "disappears", "changes"
    rule_id: str
    order: str
    rank: int
    current: CardView | None
    candidate: CardView | None
    fields: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {
            "change": self.kind,
            "rule": self.rule_id,
            "order": self.order or None,
            "rank": self.rank,
            "fields": list(self.fields),
            "current": self.current.as_json() if self.current else None,
            "candidate": self.candidate.as_json() if self.candidate else None,
        }


@dataclass(frozen=True)
class RequestResult:
    file: str
    service_id: str
    hook_instance: str
    current: Answer
    candidate: Answer
    changes: tuple[CardChange, ...]

    @property
    def status_changed(self) -> bool:
        return (self.current.status, self.current.error) != (self.candidate.status, self.candidate.error)

    @property
    def changed(self) -> bool:
        return bool(self.changes) or self.status_changed

    def as_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "service": self.service_id,
            "hookInstance": self.hook_instance,
            "status": {"current": self.current.status, "candidate": self.candidate.status},
            "errors": {"current": self.current.error, "candidate": self.candidate.error},
            "cards": {"current": len(self.current.cards), "candidate": len(self.candidate.cards)},
            "changed": self.changed,
            "changes": [c.as_json() for c in self.changes],
        }


@dataclass
class RuleTally:
    appears: int = 0
    disappears: int = 0
    changes: int = 0
    requests: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class Comparison:
    current_version: str
    candidate_version: str
    current_source: dict[str, str]
    candidate_source: dict[str, str]
    now: datetime
    results: tuple[RequestResult, ...]

    @property
    def changed(self) -> bool:
        return any(r.changed for r in self.results)

    def by_rule(self) -> dict[str, RuleTally]:
        tallies: dict[str, RuleTally] = {}
        for result in self.results:
            for change in result.changes:
                tally = tallies.setdefault(change.rule_id, RuleTally())
                setattr(tally, change.kind, getattr(tally, change.kind) + 1)
                tally.requests.add(result.file)
        return dict(sorted(tallies.items()))

    def as_json(self) -> dict[str, Any]:
        return {
            "current": {"protocolVersion": self.current_version, **self.current_source},
            "candidate": {"protocolVersion": self.candidate_version, **self.candidate_source},
            "now": self.now.isoformat().replace("+00:00", "Z"),
            "changed": self.changed,
            "requests": len(self.results),
            "changedRequests": sum(1 for r in self.results if r.changed),
            "byRule": {
                rule: {
                    "appears": t.appears,
                    "disappears": t.disappears,
                    "changes": t.changes,
                    "requests": len(t.requests),
                }
                for rule, t in self.by_rule().items()
            },
            "results": [r.as_json() for r in self.results],
        }


# --- request files ------------------------------------------------------------------------------------
def request_files(paths: Iterable[Path]) -> list[Path]:
    """The request files named, directories searched recursively for *.json (sorted, each file once)."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*.json") if p.is_file()))
        elif path.is_file():
            found.append(path)
        else:
            raise CompareError(f"{path}: no such file or directory")
    unique = list(dict.fromkeys(found))
    if not unique:
        raise CompareError("no request files (*.json) found")
    return unique


def read_request(path: Path) -> tuple[str, Any]:
    """(service id, parsed body) of a request file; CompareError with a one-line reason otherwise."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CompareError(f"{path}: cannot read ({exc.strerror})") from exc
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise CompareError(f"{path}: not valid JSON ({exc.msg})") from exc
    hook = body.get("hook") if isinstance(body, dict) else None
    service_id = HOOK_TO_SERVICE.get(hook) if isinstance(hook, str) else None
    if service_id is None:
        raise CompareError(f"{path}: no service answers hook {hook!r}")
    return service_id, body


# --- one side -------------------------------------------------------------------------------------------
def answer(engine: Engine, service_id: str, body: Any, now: datetime) -> Answer:
    """The engine's answer to one request, as the endpoint would give it."""
    try:
        raise_for_depth(body, engine.settings)
        outcome = engine.handle(service_id, body, now=now)
    except ServiceError as exc:
        return Answer(status=exc.status, error=exc.summary)
    drafts = _draft_order_ids(body)
    rule_ids = [record.rule_id for record in outcome.cards]
    return Answer(status=200, cards=card_views(outcome.body["cards"], rule_ids, drafts, engine.protocol.version))


def card_views(
    cards: Sequence[dict[str, Any]], rule_ids: Sequence[str], draft_ids: frozenset[str], version: str
) -> tuple[CardView, ...]:
    """The cards of a response with their stable identities (rule ids in the order of the cards)."""
    views = []
    ranks: dict[tuple[str, str], int] = {}
    for card, rule_id in zip(cards, rule_ids, strict=True):
        order = _order_of(card, draft_ids)
        ranks[(rule_id, order)] = rank = ranks.get((rule_id, order), 0) + 1
        views.append(
            CardView(
                rule_id=rule_id,
                order=order,
                rank=rank,
                indicator=str(card.get("indicator")),
                topic=str(((card.get("source") or {}).get("topic") or {}).get("code")),
                summary=str(card.get("summary")),
                detail=_mask_version(str(card.get("detail", "")), version),
                suggestions=tuple(
                    orjson.dumps(_without_uuids(s), option=orjson.OPT_SORT_KEYS).decode()
                    for s in card.get("suggestions") or ()
                ),
            )
        )
    return tuple(views)


def _mask_version(text: str, version: str) -> str:
    """The detail with the protocol version it quotes masked (a new version number alone is no change)."""
    if not version:
        return text
    # Bounded by anything but digits and dots, so "version 2026.11.3" and "v2026.11.3" are masked, 2026.11.30 is not.
    return re.sub(rf"(?<![\d.]){re.escape(version)}(?!\d|\.\d)", _VERSION_MARK, text)


def _draft_order_ids(body: Any) -> frozenset[str]:
    try:
        entries = body["context"]["draftOrders"]["entry"]
    except (KeyError, TypeError):
        return frozenset()
    ids = set()
    for entry in entries if isinstance(entries, list) else ():
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if (
            isinstance(resource, dict)
            and resource.get("resourceType") == "MedicationRequest"
            and isinstance(resource.get("id"), str)
        ):
            ids.add(resource["id"])
    return frozenset(ids)


def _order_of(card: dict[str, Any], draft_ids: frozenset[str]) -> str:
    """The draft order a card's suggestions act on (update or delete), else ""."""
    for suggestion in card.get("suggestions") or ():
        for action in suggestion.get("actions") or ():
            ref = action.get("resourceId")
            if isinstance(ref, str) and ref.startswith("MedicationRequest/"):
                order = ref.split("/", 1)[1]
                if order in draft_ids:
                    return order
    return ""


def _without_uuids(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_uuids(v) for k, v in value.items() if k != "uuid"}
    if isinstance(value, list):
        return [_without_uuids(v) for v in value]
    return value


# --- the difference ---------------------------------------------------------------------------------------
def diff_cards(current: Sequence[CardView], candidate: Sequence[CardView]) -> tuple[CardChange, ...]:
    """Cards that appear, disappear or change, in the order of the current response then the new cards."""
    before = {c.key: c for c in current}
    after = {c.key: c for c in candidate}
    changes = []
    for key, old in before.items():
        new = after.get(key)
        if new is None:
            changes.append(CardChange("disappears", *key, current=old, candidate=None))
            continue
        fields = tuple(f for f in COMPARED_FIELDS if getattr(old, f) != getattr(new, f))
        if fields:
            changes.append(CardChange("changes", *key, current=old, candidate=new, fields=fields))
    for key, new in after.items():
        if key not in before:
            changes.append(CardChange("appears", *key, current=None, candidate=new))
    return tuple(changes)


def compare_requests(
    files: Sequence[Path], current: Engine, candidate: Engine, now: datetime, base: Path | None = None
) -> Comparison:
    """Replay every file under both engines at `now`. Raises CompareError for an unreadable file."""
    results = []
    for path in files:
        service_id, body = read_request(path)
        old = answer(current, service_id, body, now)
        new = answer(candidate, service_id, body, now)
        hook_instance = body.get("hookInstance") if isinstance(body.get("hookInstance"), str) else ""
        changes = diff_cards(old.cards, new.cards) if old.status == new.status == 200 else ()
        results.append(
            RequestResult(
                file=_display_path(path, base),
                service_id=service_id,
                hook_instance=hook_instance,
                current=old,
                candidate=new,
                changes=changes,
            )
        )
    return Comparison(
        current_version=current.protocol.version,
        candidate_version=candidate.protocol.version,
        current_source=_source(current, base),
        candidate_source=_source(candidate, base),
        now=now,
        results=tuple(results),
    )


def _source(engine: Engine, base: Path | None) -> dict[str, str]:
    return {
        "protocolFile": _display_path(engine.settings.protocol_file, base),
        "cardsDir": _display_path(engine.settings.cards_dir, base),
    }


def _display_path(path: Path, base: Path | None) -> str:
    if base is not None:
        try:
            return str(path.resolve().relative_to(base.resolve()))
        except ValueError:
            pass
    return str(path)


# --- text for the terminal --------------------------------------------------------------------------------
def render_text(comparison: Comparison) -> str:
    c = comparison
    lines = [
        f"current:   protocol {c.current_version} ({c.current_source['protocolFile']}; "
        f"card wording {c.current_source['cardsDir']}/)",
        f"candidate: protocol {c.candidate_version} ({c.candidate_source['protocolFile']}; "
        f"card wording {c.candidate_source['cardsDir']}/)",
        f"evaluated at {c.now.isoformat().replace('+00:00', 'Z')}; {len(c.results)} request(s) replayed",
        "",
    ]
    for result in c.results:
        if not result.changed:
            continue
        lines.append(f"{result.file} ({result.service_id})")
        if result.status_changed:
            lines.append(f"  ! answer {_status(result.current)} -> {_status(result.candidate)}")
        for change in result.changes:
            lines.extend(_change_lines(change))
        lines.append("")
    tallies = c.by_rule()
    if tallies:
        width = max(len("rule"), *(len(r) for r in tallies))
        lines.append("By rule:")
        lines.append(f"  {'rule':<{width}}  appears  disappears  changes  requests")
        for rule, t in tallies.items():
            lines.append(f"  {rule:<{width}}  {t.appears:>7}  {t.disappears:>10}  {t.changes:>7}  {len(t.requests):>8}")
        lines.append("")
    changed = sum(1 for r in c.results if r.changed)
    if changed:
        kinds = ("appears", "disappears", "changes")
        totals = {kind: sum(getattr(t, kind) for t in tallies.values()) for kind in kinds}
        lines.append(
            f"{changed} of {len(c.results)} request(s) answered differently: {totals['appears']} card(s) appear, "
            f"{totals['disappears']} disappear, {totals['changes']} change."
        )
    else:
        lines.append(f"No change: all {len(c.results)} request(s) get the same cards.")
    return "\n".join(lines) + "\n"


def _status(ans: Answer) -> str:
    return "200" if ans.status == 200 else f"{ans.status} ({ans.error})"


def _label(change: CardChange) -> str:
    where = f" [order {change.order}]" if change.order else ""
    rank = f" #{change.rank}" if change.rank > 1 else ""
    return f"{change.rule_id}{where}{rank}"


def _change_lines(change: CardChange) -> list[str]:
    if change.kind == "appears" and change.candidate is not None:
        return [f"  + {_label(change)} appears: {change.candidate.indicator} {change.candidate.topic}: "
                f"{change.candidate.summary}"]  # fmt: skip
    if change.kind == "disappears" and change.current is not None:
        return [f"  - {_label(change)} disappears: {change.current.indicator} {change.current.topic}: "
                f"{change.current.summary}"]  # fmt: skip
    assert change.current is not None and change.candidate is not None
    lines = [f"  ~ {_label(change)} changes: {', '.join(change.fields)}"]
    old, new = change.current, change.candidate
    for name in ("indicator", "topic", "summary"):
        if name in change.fields:
            lines.append(f"      {name}: {getattr(old, name)}")
            lines.append(f"      {' ' * len(name)}  -> {getattr(new, name)}")
    if "suggestions" in change.fields:
        before = "; ".join(orjson.loads(s)["label"] for s in old.suggestions) or "none"
        after = "; ".join(orjson.loads(s)["label"] for s in new.suggestions) or "none"
        lines.append(f"      suggestions: {before}")
        lines.append(f"                -> {after}")
    if "detail" in change.fields and "summary" not in change.fields:
        lines.extend(f"      detail: {line}" for line in _detail_diff(old.detail, new.detail))
    return lines


def _detail_diff(old: str, new: str, limit: int = 4) -> list[str]:
    """The lines of a card detail that differ, as - / + lines (at most `limit`)."""
    out = [
        line
        for line in difflib.unified_diff(old.splitlines(), new.splitlines(), lineterm="", n=0)
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]
    return out[:limit] + ([f"... {len(out) - limit} more line(s)"] if len(out) > limit else [])
