"""The rule catalogue and the pharmacist-facing protocol document, generated from the protocol file."""

from __future__ import annotations

from typing import Any

from .protocol import Protocol

_PARAMETER_SECTIONS = (
    ("doses", "Doses (2)"),
    ("schedule", "Schedule and restart after delay (2.1, 2.2)"),
    ("administration", "Administration (3)"),
    ("premedication", "Premedication and hydration (4)"),
    ("monitoring", "Monitoring (5)"),
    ("toxicity", "CRS and neurologic toxicity (6, 7)"),
    ("labs", "Laboratory checks (8)"),
    ("units", "Units accepted and conversion factors (8.3)"),
    ("populations", "Special populations (9)"),
    ("medications", "Medication value sets (10)"),
    ("observations", "Observation codes, LOINC (10)"),
    ("answers", "Answer codes (10)"),
    ("local_observation_codes", "Local observation codes, system urn:tarlatamab-cds (10)"),
    ("conditions", "Condition value sets (10)"),
    ("orderables", "Orders the service suggests"),
)


def catalogue_table(protocol: Protocol) -> str:
    rows = [("id", "topic", "indicator", "source", "section")]
    for rule in protocol.rules.values():
        indicator = rule.indicator
        if rule.indicator_order_select:
            indicator += f" (order-select: {rule.indicator_order_select})"
        rows.append((rule.id, rule.topic, indicator, rule.source_tags, rule.section))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [f"Protocol {protocol.id} version {protocol.version}: {len(protocol.rules)} rules"]
    for i, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(widths[j]) for j, cell in enumerate(row)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n"


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, str]]:
    if isinstance(value, dict):
        out: list[tuple[str, str]] = []
        for key, inner in value.items():
            out.extend(_flatten(inner, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        out = []
        for i, inner in enumerate(value):
            out.extend(_flatten(inner, f"{prefix}[{i}]"))
        return out
    if isinstance(value, list):
        return [(prefix, ", ".join(str(v) for v in value) if value else "(none)")]
    return [(prefix, "(none)" if value is None else str(value))]


def pharmacist_document(protocol: Protocol) -> str:
    meta = protocol.data["protocol"]
    lines = [
        f"# {meta['title']}: rules and parameters",
        "",
        f"Generated from `protocol/tarlatamab.yaml` (protocol `{protocol.id}`, version **{protocol.version}**) by",
        "`cds-service protocol --markdown`. Do not edit by hand: change the protocol file and regenerate;",
        "a test fails when this document and the protocol file disagree.",
        "",
        "Source tags: " + "; ".join(f"**[{tag}]** {text}" for tag, text in protocol.data["sources"].items()) + ".",
        "",
        "## Rules",
        "",
        "| Rule | Section | Topic | Indicator | Sources | What it checks (thresholds) |",
        "|---|---|---|---|---|---|",
    ]
    for rule in protocol.rules.values():
        indicator = rule.indicator
        if rule.indicator_order_select:
            indicator += f" (order-select: {rule.indicator_order_select})"
        cells = (f"`{rule.id}`", rule.section, rule.topic, indicator, rule.source_tags, _escape(rule.citation))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Parameters", ""]
    for key, title in _PARAMETER_SECTIONS:
        lines += [f"### {title}", "", "| Parameter | Value |", "|---|---|"]
        for name, value in _flatten(protocol.data[key]):
            lines.append(f"| `{key}.{name}` | {_escape(value)} |")
        lines.append("")
    return "\n".join(lines)
