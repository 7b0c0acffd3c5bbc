"""Findings -> CDS Hooks cards, with wording from `cards/*.yaml` (one entry per rule id).

`card_set.assemble` first decides which findings make which card (one held card, problem cards, one plan
card per order); this module words and renders them. Every record-derived value passes `card_text.safe_value`
(escaped, capped, clinical units) before it enters a template. Every card's `source.url` is its rule on the
service's protocol page (`{base}/protocol#rule-<id>`); the FDA label stays in `links`.
Cards never see FHIR: suggestions are built by `suggestions.py` from the finding's SuggestionSpec.
Card and suggestion uuids are derived from the hookInstance, the rule and the order, so the same request
always yields the same response (replay and HTTP agree) while every invocation gets its own uuids.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from .card_set import PLAN_TOPIC, CardPlan, assemble, plan_indicator
from .card_text import plain_value, safe_value, template_view
from .findings import Evidence, Finding, SuggestionSpec
from .protocol import INDICATORS, Protocol, RuleDef
from .suggestions import SuggestionBuilder

TOPIC_SYSTEM = "urn:tarlatamab-cds:card-topic"
SUMMARY_MAX = 139
MAX_EVIDENCE_LINES = 20
DEFAULT_BASE_URL = "http://localhost"  # replay without CDS_PUBLIC_BASE_URL (the Flask test client's host)
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
    return template.format_map(values if type(values) is _Values else _Values(values)).strip()


def protocol_page_url(base_url: str, rule_id: str | None = None) -> str:
    """The protocol page, or one rule's anchor on it: `{base}/protocol#rule-<id>`."""
    url = f"{base_url.rstrip('/')}/protocol"
    return f"{url}#rule-{rule_id}" if rule_id else url


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
        self._p = template_view(protocol.data)
        # Wording that depends only on the protocol and the card texts, filled on first use (never patient data).
        self._texts_by_variant: dict[tuple[str, Any], dict[str, Any]] = {}
        self._sources_lines: dict[tuple[str, ...], str] = {}
        self._source_labels: dict[str, str] = {}
        self._links = [
            {"label": fill(link["label"], {}), "url": link["url"], "type": "absolute"}
            for link in texts.common.get("links", [])
        ]

    # --- entry point -------------------------------------------------------------------------------
    def render(
        self,
        findings: Iterable[Finding],
        *,
        hook: str,
        hook_instance: str,
        suggestion_builder: SuggestionBuilder,
        base_url: str | None = None,
    ) -> list[tuple[str, dict[str, Any]]]:
        """(leading rule id, card) pairs, most urgent first (stable within an indicator)."""
        base = base_url or DEFAULT_BASE_URL
        cards = []
        seen: dict[str, int] = {}
        for plan in assemble(findings, self.protocol, hook):
            kind = "" if plan.kind == "single" else f"{plan.kind}|"
            key = f"{hook_instance}|{kind}{plan.lead.rule_id}|{plan.order_id or ''}"
            seen[key] = seen.get(key, 0) + 1
            identity = f"{key}|{seen[key]}"
            if plan.kind == "held":
                card = self._held_card(plan, hook, identity, suggestion_builder, base)
            elif plan.kind == "plan":
                card = self._plan_card(plan, hook, identity, base)
            else:
                card = self._single_card(plan.lead, hook, identity, suggestion_builder, base)
            cards.append((plan.lead.rule_id, card))
        cards.sort(key=lambda pair: -_INDICATOR_RANK[pair[1]["indicator"]])
        return cards

    # --- the three kinds of card -------------------------------------------------------------------
    def _single_card(
        self, finding: Finding, hook: str, identity: str, builder: SuggestionBuilder, base: str
    ) -> dict[str, Any]:
        rule = self.protocol.rule(finding.rule_id)
        text = self._text(finding)
        values = self._values(finding, hook)
        parts = [fill(text["detail"], values), self._evidence_block(_with_related_evidence(finding))]
        parts.append(self._source_line(rule))
        card = self._card(
            identity,
            _shorten(fill(text["summary"], self._values(finding, hook, markdown=False))),
            finding.indicator or rule.indicator_for(hook),
            parts,
            rule,
            rule.topic,
            base,
        )
        self._add_suggestions(card, finding.suggestions, text, values, identity, builder, finding.rule_id)
        self._add_override_reasons(card, [text])
        return card

    def _held_card(
        self, plan: CardPlan, hook: str, identity: str, builder: SuggestionBuilder, base: str
    ) -> dict[str, Any]:
        held = self.texts.common["held_card"]
        lead_rule = self.protocol.rule(plan.lead.rule_id)
        reasons = plan.findings
        lead_summary = self._summary(plan.lead, hook, markdown=False)
        more = len(reasons) - 1
        suffix = " " + fill(held["more_reasons_one" if more == 1 else "more_reasons"], {"count": more}) if more else ""
        summary = _shorten(lead_summary, SUMMARY_MAX - len(suffix)) + suffix
        parts = [fill(held["intro_one" if len(reasons) == 1 else "intro"], {"count": len(reasons)})]
        for number, finding in enumerate(reasons, start=1):
            rule = self.protocol.rule(finding.rule_id)
            text = self._text(finding)
            values = self._values(finding, hook)
            heading = [f"**{number}. {fill(text['summary'], values)}**"] if len(reasons) > 1 else []
            block = [*heading, fill(text["detail"], values)]
            block.append(self._evidence_block(finding.evidence))
            block.append(self._source_line(rule))
            parts.append("\n\n".join(b for b in block if b))
        # The order's own problems (dose, schedule) matter only if the hold is overridden: listed apart, without
        # their buttons; the patient's other problems (labs, infection...) under "also noted".
        override_topics = set(self.protocol.data.get("card_set", {}).get("held_override_topics", ()))
        for heading, group in (
            ("override_heading", [f for f in plan.also if self.protocol.rule(f.rule_id).topic in override_topics]),
            ("also_heading", [f for f in plan.also if self.protocol.rule(f.rule_id).topic not in override_topics]),
        ):
            if group:
                parts.append(held[heading] + "\n" + "\n".join(f"- {self._summary(f, hook)}" for f in group))
        card = self._card(identity, summary, "critical", parts, lead_rule, lead_rule.topic, base)
        delete = (SuggestionSpec("delete-order", plan.order_id),)
        self._add_suggestions(card, delete, {}, {"p": self._p}, identity, builder, plan.lead.rule_id)
        self._add_override_reasons(card, [self._text(f) for f in reasons])
        return card

    def _plan_card(self, plan: CardPlan, hook: str, identity: str, base: str) -> dict[str, Any]:
        texts = self.texts.common["plan_card"]
        lead_rule = self.protocol.rule(plan.lead.rule_id)
        indicator = max((plan_indicator(f, self.protocol, hook) for f in plan.findings), key=_INDICATOR_RANK.get)
        lines = []
        values = [self._values(finding, hook) for finding in plan.findings]  # the lead's first
        for finding, finding_values in zip(plan.findings, values, strict=True):
            text = self._text(finding)
            lines.append("- " + fill(text.get("plan", text["summary"]), finding_values))
        if not any(self.protocol.rule(f.rule_id).topic == "administration" for f in plan.findings):
            lines.append(self._infusion_line)
        parts = [fill(texts["intro"], values[0]) + "\n\n" + "\n".join(lines)]
        evidence = dict.fromkeys(e for finding in plan.findings for e in finding.evidence)
        parts.append(self._evidence_block(evidence))
        parts.append(self._sources_line([self.protocol.rule(f.rule_id) for f in plan.findings]))
        card = self._card(
            identity, _shorten(self._summary(plan.lead, hook, markdown=False)), indicator, parts, lead_rule,
            PLAN_TOPIC, base,
        )  # fmt: skip
        if indicator != "info":
            self._add_override_reasons(card, [self._text(f) for f in plan.findings])
        return card

    # --- pieces ------------------------------------------------------------------------------------
    @cached_property
    def _infusion_line(self) -> str:
        return "- " + fill(self.texts.common["plan_card"]["infusion_line"], {"p": self._p})

    def _card(
        self,
        identity: str,
        summary: str,
        indicator: str,
        parts: list[str],
        rule: RuleDef,
        topic: str,
        base: str,
    ) -> dict[str, Any]:
        card: dict[str, Any] = {
            "uuid": str(uuid.uuid5(_UUID_NAMESPACE, identity)),
            "summary": summary,
            "indicator": indicator,
            "detail": "\n\n".join(p for p in parts if p),
            "source": {
                "label": self._source_label(rule),
                "url": protocol_page_url(base, rule.id),
                "topic": {"system": TOPIC_SYSTEM, "code": topic, "display": topic},
            },
        }
        if self._links:
            card["links"] = list(self._links)
        return card

    def _source_label(self, rule: RuleDef) -> str:
        label = self._source_labels.get(rule.id)
        if label is None:
            values = {"version": self.protocol.version, "rule_id": rule.id}
            label = self._source_labels[rule.id] = fill(self.texts.common["source_label"], values)
        return label

    def _text(self, finding: Finding) -> dict[str, Any]:
        """The wording of a finding's rule, its variant's entries merged in (shared: never modify it)."""
        variant = finding.values.get("variant")
        if variant is None:
            return self.texts.for_rule(finding.rule_id)
        key = (finding.rule_id, variant)
        text = self._texts_by_variant.get(key)
        if text is None:
            text = self.texts.for_rule(finding.rule_id)
            try:
                text = {**text, **text["variants"][variant]}
            except KeyError as exc:
                raise CardTextError(f"no card wording for variant {variant!r} of {finding.rule_id}") from exc
            self._texts_by_variant[key] = text  # keys are variant names of cards/*.yaml (looked up above)
        return text

    def _values(self, finding: Finding, hook: str, markdown: bool = True) -> dict[str, Any]:
        """The template values of a finding: every record-derived value made safe (escaped for Markdown, or
        plain for a card's summary), protocol data as `p`."""
        safe = safe_value if markdown else plain_value
        values: dict[str, Any] = _Values({k: safe(v) for k, v in finding.values.items() if k != "variant"})
        values["p"] = self._p
        text = self._text(finding)
        plural = self.texts.common["count_words"]
        for name, related in finding.related:
            lines = [self._line_of(f, hook, markdown) for f in related]
            empty = text.get("empty", {}).get(name, "none")
            values[name] = "; ".join(lines) or empty
            values[f"{name}_list"] = "\n".join(f"- {line}" for line in lines) or empty
            values[f"{name}_count"] = len(lines)
            values[f"{name}_count_words"] = fill(plural["one" if len(lines) == 1 else "many"], {"count": len(lines)})
        return values

    def _summary(self, finding: Finding, hook: str, markdown: bool = True) -> str:
        return fill(self._text(finding)["summary"], self._values(finding, hook, markdown)).rstrip(".")

    def _line_of(self, finding: Finding, hook: str, markdown: bool = True) -> str:
        """A related finding inside a summary card: a plan finding's plan line, else its summary."""
        text = self._text(finding)
        if "plan" in text and self.protocol.rule(finding.rule_id).role == "plan":
            return fill(text["plan"], self._values(finding, hook, markdown)).rstrip(".")
        return self._summary(finding, hook, markdown)

    def summary_of(self, finding: Finding, hook: str) -> str:
        """The summary line a finding's own card would have (used inside summary and held cards)."""
        return self._summary(finding, hook)

    def _evidence_block(self, evidence: Iterable[Evidence]) -> str:
        items = list(evidence)
        if not items:
            return ""
        lines = [self.texts.common["evidence_heading"]]
        for ev in items[:MAX_EVIDENCE_LINES]:
            extra = ", ".join(str(safe_value(x)) for x in (ev.date, ev.reference) if x)
            line = f"- {safe_value(ev.label)}: {safe_value(ev.value)}"
            lines.append(line + (f" ({extra})" if extra else ""))
        if len(items) > MAX_EVIDENCE_LINES:
            lines.append("- " + fill(self.texts.common["evidence_more"], {"count": len(items) - MAX_EVIDENCE_LINES}))
        return "\n".join(lines)

    def _source_line(self, rule: RuleDef) -> str:
        return self._sources_line([rule])

    def _sources_line(self, rules: list[RuleDef]) -> str:
        """"Source: IMDELLTRA prescribing information, section 2.2; institutional protocol v…, rule <id>"."""
        key = tuple(r.id for r in rules)
        line = self._sources_lines.get(key)
        if line is None:
            line = self._sources_lines[key] = self._new_sources_line(rules)
        return line

    def _new_sources_line(self, rules: list[RuleDef]) -> str:
        common = self.texts.common
        parts = []
        labels = list(dict.fromkeys(r.label for r in rules if r.label))
        if labels:
            parts.append(fill(common["source_fda_label"], {"label": "; ".join(labels)}))
        ids = list(dict.fromkeys(r.id for r in rules))
        template = common["source_protocol_rule" if len(ids) == 1 else "source_protocol_rules"]
        parts.append(fill(template, {"version": self.protocol.version, "rule_id": ids[0], "rule_ids": ", ".join(ids)}))
        return fill(common["source_line"], {"sources": "; ".join(parts)})

    def _add_suggestions(
        self,
        card: dict[str, Any],
        specs: Iterable[SuggestionSpec],
        text: dict[str, Any],
        values: dict[str, Any],
        identity: str,
        builder: SuggestionBuilder,
        rule_id: str,
    ) -> None:
        suggestions = []
        labels = text.get("suggestions", {})
        for i, spec in enumerate(specs):
            label_template = labels.get(spec.kind) or self.texts.common["suggestion_labels"][spec.kind]
            extra = {}
            if "orderable" in spec.params:
                extra["orderable_display"] = self.protocol.data["orderables"][spec.params["orderable"]]["display"]
            label = fill(label_template, {**values, **spec.params, **extra})
            if len(label) > 80:
                raise CardTextError(f"suggestion label for {rule_id} is longer than 80 characters")
            actions = builder.actions(spec, label)
            if not actions:
                continue
            suggestions.append(
                {
                    "label": label,
                    "uuid": str(uuid.uuid5(_UUID_NAMESPACE, f"{identity}|suggestion|{i}")),
                    "isRecommended": not suggestions,
                    "actions": actions,
                }
            )
        if suggestions:
            card["suggestions"] = suggestions
            card["selectionBehavior"] = "at-most-one"

    def _add_override_reasons(self, card: dict[str, Any], texts: list[dict[str, Any]]) -> None:
        common = self.texts.common
        merged: dict[str, dict[str, str]] = {}
        for text in texts:
            reasons = text.get("override_reasons")
            if isinstance(reasons, str):  # the name of a shared set in common.yaml
                reasons = common["override_reason_sets"][reasons]
            for r in reasons or ():
                merged.setdefault(r["code"], r)
        if merged:
            card["overrideReasons"] = [
                {"system": common["override_reason_system"], "code": r["code"], "display": r["display"]}
                for r in merged.values()
            ]


def _shorten(summary: str, limit: int = SUMMARY_MAX) -> str:
    return summary if len(summary) <= limit else summary[: limit - 1].rstrip() + "…"


def _with_related_evidence(finding: Finding) -> list[Evidence]:
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
