"""Findings -> CDS Hooks cards, with wording from `cards/*.yaml` (one entry per rule id).

Cards never see FHIR: suggestions are built by `suggestions.py` from the finding's SuggestionSpec.
Card and suggestion uuids are derived from the hookInstance, the rule and the order, so the same request
always yields the same response (replay and HTTP agree) while every invocation gets its own uuids.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .findings import Finding
from .protocol import INDICATORS, Protocol
from .suggestions import SuggestionBuilder

TOPIC_SYSTEM = "urn:tarlatamab-cds:card-topic"
SUMMARY_MAX = 139
_UUID_NAMESPACE = uuid.UUID("6f3a51f0-2a4f-4c36-9a55-8f0f6f4de3a1")
_INDICATOR_RANK = {name: i for i, name in enumerate(INDICATORS)}


class CardTextError(ValueError):
    """The card wording files are missing an entry or a template refers to an unknown value."""


@dataclass(frozen=True)
class CardTexts:
    common: dict[str, Any]
    rules: dict[str, dict[str, Any]]

    def for_rule(self, rule_id: str) -> dict[str, Any]:
        try:
            return self.rules[rule_id]
        except KeyError as exc:
            raise CardTextError(f"no card wording for rule {rule_id!r} in cards/") from exc


def load_card_texts(cards_dir: Path) -> CardTexts:
    common_path = cards_dir / "common.yaml"
    if not common_path.is_file():
        raise CardTextError(f"card wording not found: {common_path}")
    common = yaml.safe_load(common_path.read_text(encoding="utf-8")) or {}
    rules: dict[str, dict[str, Any]] = {}
    for path in sorted(cards_dir.glob("*.yaml")):
        if path.name == "common.yaml":
            continue
        content = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for rule_id, entry in content.items():
            if rule_id in rules:
                raise CardTextError(f"card wording for {rule_id} appears twice (second in {path.name})")
            if not isinstance(entry, dict) or "summary" not in entry or "detail" not in entry:
                raise CardTextError(f"{path.name}: {rule_id} needs a summary and a detail")
            rules[rule_id] = entry
    return CardTexts(common=common, rules=rules)


class _Values(dict[str, Any]):
    def __missing__(self, key: str) -> Any:
        raise CardTextError(f"card template refers to {{{key}}}, which the rule does not provide")


def fill(template: str, values: dict[str, Any]) -> str:
    return template.format_map(_Values(values)).strip()


def check_templates(texts: CardTexts, protocol: Protocol) -> None:
    """Every rule of the protocol has wording, and every wording belongs to a rule."""
    missing = sorted(set(protocol.rules) - set(texts.rules))
    extra = sorted(set(texts.rules) - set(protocol.rules))
    if missing or extra:
        raise CardTextError(f"card wording out of step with protocol: missing {missing}, unknown {extra}")


class CardRenderer:
    def __init__(self, protocol: Protocol, texts: CardTexts) -> None:
        self.protocol = protocol
        self.texts = texts
        common = texts.common
        self._source_base = {"label": common["source_label"]}
        if common.get("source_url"):
            self._source_base["url"] = common["source_url"]
        self._links = [
            {"label": fill(link["label"], {}), "url": link["url"], "type": "absolute"}
            for link in common.get("links", [])
        ]

    def render(
        self,
        findings: Iterable[Finding],
        *,
        hook: str,
        hook_instance: str,
        suggestion_builder: SuggestionBuilder,
    ) -> list[tuple[str, dict[str, Any]]]:
        """(rule id, card) pairs, most urgent first (stable within an indicator)."""
        cards = []
        seen: dict[str, int] = {}
        for finding in findings:
            key = f"{hook_instance}|{finding.rule_id}|{finding.order_id or ''}"
            seen[key] = seen.get(key, 0) + 1
            cards.append((finding.rule_id, self._card(finding, hook, f"{key}|{seen[key]}", suggestion_builder)))
        cards.sort(key=lambda pair: -_INDICATOR_RANK[pair[1]["indicator"]])
        return cards

    def _card(
        self, finding: Finding, hook: str, identity: str, suggestion_builder: SuggestionBuilder
    ) -> dict[str, Any]:
        rule = self.protocol.rule(finding.rule_id)
        text = self.texts.for_rule(finding.rule_id)
        variant = finding.values.get("variant")
        if variant is not None:
            try:
                text = {**text, **text["variants"][variant]}
            except KeyError as exc:
                raise CardTextError(f"no card wording for variant {variant!r} of {finding.rule_id}") from exc
        values = {"p": self.protocol.data, **finding.values}
        for name, related in finding.related:
            lines = [self.summary_of(f, hook) for f in related]
            empty = text.get("empty", {}).get(name, "none")
            values[name] = "; ".join(lines) or empty
            values[f"{name}_list"] = "\n".join(f"- {line}" for line in lines) or empty
            values[f"{name}_count"] = len(lines)
        summary = fill(text["summary"], values)
        if len(summary) > SUMMARY_MAX:
            summary = summary[: SUMMARY_MAX - 1].rstrip() + "…"
        indicator = finding.indicator or rule.indicator_for(hook)
        card: dict[str, Any] = {
            "uuid": str(uuid.uuid5(_UUID_NAMESPACE, identity)),
            "summary": summary,
            "indicator": indicator,
            "detail": self._detail(text, values, finding, rule),
            "source": {
                **self._source_base,
                "topic": {"system": TOPIC_SYSTEM, "code": rule.topic, "display": rule.topic},
            },
        }
        suggestions = []
        labels = text.get("suggestions", {})
        for i, spec in enumerate(finding.suggestions):
            label_template = labels.get(spec.kind) or self.texts.common["suggestion_labels"][spec.kind]
            extra = {}
            if "orderable" in spec.params:
                extra["orderable_display"] = self.protocol.data["orderables"][spec.params["orderable"]]["display"]
            label = fill(label_template, {**values, **spec.params, **extra})
            if len(label) > 80:
                raise CardTextError(f"suggestion label for {finding.rule_id} is longer than 80 characters")
            actions = suggestion_builder.actions(spec, label)
            if not actions:
                continue
            suggestions.append(
                {
                    "label": label,
                    "uuid": str(uuid.uuid5(_UUID_NAMESPACE, f"{identity}|suggestion|{i}")),
                    "isRecommended": i == 0,
                    "actions": actions,
                }
            )
        if suggestions:
            card["suggestions"] = suggestions
            card["selectionBehavior"] = "at-most-one"
        reasons = text.get("override_reasons")
        if isinstance(reasons, str):  # the name of a shared set in common.yaml
            reasons = self.texts.common["override_reason_sets"][reasons]
        if reasons:
            card["overrideReasons"] = [
                {"system": self.texts.common["override_reason_system"], "code": r["code"], "display": r["display"]}
                for r in reasons
            ]
        if self._links:
            card["links"] = list(self._links)
        return card

    def summary_of(self, finding: Finding, hook: str) -> str:
        """The summary line a finding's own card would have (used inside summary cards)."""
        text = self.texts.for_rule(finding.rule_id)
        variant = finding.values.get("variant")
        if variant is not None:
            text = {**text, **text["variants"][variant]}
        return fill(text["summary"], {"p": self.protocol.data, **finding.values}).rstrip(".")

    def _detail(self, text: dict[str, Any], values: dict[str, Any], finding: Finding, rule: Any) -> str:
        common = self.texts.common
        parts = [fill(text["detail"], values)]
        evidence = _with_related_evidence(finding)
        if evidence:
            lines = [common["evidence_heading"]]
            for ev in evidence:
                extra = ", ".join(x for x in (ev.date, ev.reference) if x)
                lines.append(f"- {ev.label}: {ev.value}" + (f" ({extra})" if extra else ""))
            parts.append("\n".join(lines))
        sources = "; ".join(f"[{tag}] {self.protocol.data['sources'][tag]}" for tag in rule.sources)
        parts.append(
            fill(
                common["rule_line"],
                {
                    "rule_id": rule.id,
                    "section": rule.section,
                    "citation": rule.citation,
                    "sources": sources,
                    "protocol_version": self.protocol.version,
                },
            )
        )
        return "\n\n".join(parts)


def _with_related_evidence(finding: Finding) -> list[Any]:
    """The finding's own evidence, all of it, then that of the findings it summarises (patient-view) where
    it names a resource not already shown: the first mention of a resource wins."""
    own = list(finding.evidence)
    seen: set[object] = {ev.reference or ev for ev in own}
    for _, related in finding.related:
        for other in related:
            for ev in other.evidence:
                key = ev.reference or ev
                if key not in seen:
                    seen.add(key)
                    own.append(ev)
    return own
