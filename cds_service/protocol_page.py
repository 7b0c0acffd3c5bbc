"""The pharmacist-readable protocol page behind every card (GET /protocol, one anchor `#rule-<id>` per rule),
and the HTML preview of cards for reviewers (`cds-service preview`).

Both are generated from the protocol file and the card wording, so a card's "Source" link always lands on
the rule, thresholds and version that produced it.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from typing import Any

from markdown_it import MarkdownIt

from .card_text import TemplateData
from .cards import CardTexts
from .protocol import Protocol, RuleDef

_ROLE_TEXT = {
    "hold": "Withhold or discontinue: the order gets one critical card listing every such reason, with a "
    "suggestion to cancel it; no dose, premedication, hydration, administration or monitoring advice is shown "
    "for it.",
    "problem": "A problem of the order: its own card, with its own suggestion where one applies.",
    "plan": "Part of the plan for a dose that may be given: one line of the order's plan card (monitoring).",
}

_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1b1f24;background:#f6f7f9}
header{background:#12355b;color:#fff;padding:1.2rem 2rem}header h1{margin:0 0 .3rem;font-size:1.5rem}
header p{margin:.2rem 0;opacity:.9}main{max-width:64rem;margin:0 auto;padding:1rem 2rem 3rem}
nav ul{columns:2;padding-left:1.2rem}nav a{color:#12355b}
section.rule{background:#fff;border:1px solid #d7dbe0;border-left:.4rem solid #8a96a3;border-radius:.4rem;
padding:.8rem 1.2rem;margin:1rem 0}section.rule:target{outline:3px solid #f2b400}
section.critical{border-left-color:#c62828}section.warning{border-left-color:#ef8f00}
section.info{border-left-color:#1565c0}h2{font-size:1.15rem;margin:.2rem 0 .6rem}
h2 code{font-size:1rem;background:#eef1f4;padding:.1rem .3rem;border-radius:.2rem}
dl{display:grid;grid-template-columns:11rem 1fr;gap:.35rem 1rem;margin:0}dt{font-weight:600;color:#46505a}
dd{margin:0}.badge{display:inline-block;padding:.05rem .5rem;border-radius:1rem;font-size:.85rem;color:#fff}
.b-critical{background:#c62828}.b-warning{background:#ef8f00}.b-info{background:#1565c0}
table{border-collapse:collapse;width:100%;background:#fff}td,th{border:1px solid #d7dbe0;padding:.3rem .5rem;
text-align:left;vertical-align:top;font-size:.9rem}
"""


class _Placeholders(dict[str, Any]):
    """Template values for showing wording without a patient: each value appears as ‹name›."""

    def __missing__(self, key: str) -> str:
        return f"‹{key}›"


def _example(template: str, protocol: Protocol) -> str:
    try:
        return template.format_map(_Placeholders(p=TemplateData(protocol.data))).strip()
    except (KeyError, IndexError, ValueError):
        return template


def _rule_section(rule: RuleDef, protocol: Protocol, texts: CardTexts) -> str:
    e = html.escape
    wording = texts.rules.get(rule.id, {})
    indicator = f'<span class="badge b-{e(rule.indicator)}">{e(rule.indicator)}</span>'
    if rule.indicator_order_select:
        indicator += f' (order-select: <span class="badge b-{e(rule.indicator_order_select)}">'
        indicator += f"{e(rule.indicator_order_select)}</span>)"
    sources = "; ".join(e(str(protocol.data["sources"][tag])) for tag in rule.sources)
    label_url = e(str(protocol.data["protocol"]["label_url"]))
    if rule.label:
        basis = f'<a href="{label_url}">IMDELLTRA prescribing information</a>, {e(rule.label)}'
    else:
        basis = "Institutional decision of this protocol (not a label requirement)"
    role = rule.role or "problem"
    rows = [
        ("What it checks", e(rule.citation)),
        ("Card", f"{indicator}, topic <code>{e(rule.topic)}</code>"),
        ("In the card set", e(("Permanent discontinuation. " if rule.permanent else "") + _ROLE_TEXT[role])),
        ("Card summary", e(_example(str(wording.get("summary", "")), protocol))),
        ("Label basis", basis),
        ("Sources", sources),
        ("Protocol", f"{e(protocol.id)} version {e(protocol.version)}, rule <code>{e(rule.id)}</code>"),
    ]
    body = "".join(f"<dt>{name}</dt><dd>{value}</dd>" for name, value in rows)
    return (
        f'<section class="rule {e(rule.indicator)}" id="rule-{e(rule.id)}">'
        f"<h2><code>{e(rule.id)}</code> {e(rule.topic)}</h2><dl>{body}</dl></section>"
    )


def _flatten(value: Any, prefix: str = "") -> Iterable[tuple[str, str]]:
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from _flatten(inner, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        for i, inner in enumerate(value):
            yield from _flatten(inner, f"{prefix}[{i}]")
    elif isinstance(value, list):
        yield prefix, ", ".join(str(v) for v in value) if value else "(none)"
    else:
        yield prefix, "(none)" if value is None else str(value)


_PARAMETERS = ("doses", "schedule", "administration", "premedication", "monitoring", "toxicity", "labs", "populations")


def protocol_page(protocol: Protocol, texts: CardTexts) -> str:
    """The whole page: header, index of rules, one section per rule, the clinical parameters."""
    e = html.escape
    meta = protocol.data["protocol"]
    index = "".join(f'<li><a href="#rule-{e(r.id)}">{e(r.id)}</a></li>' for r in protocol.rules.values())
    rules = "".join(_rule_section(r, protocol, texts) for r in protocol.rules.values())
    params = "".join(
        f"<tr><td><code>{e(section)}.{e(name)}</code></td><td>{e(value)}</td></tr>"
        for section in _PARAMETERS
        for name, value in _flatten(protocol.data.get(section, {}))
    )
    label = f'<a style="color:#fff" href="{e(str(meta["label_url"]))}">{e(str(meta["label_name"]))}</a>'
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{e(str(meta["title"]))} v{e(protocol.version)}</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_STYLE}</style></head><body>'
        f"<header><h1>{e(str(meta['title']))}</h1>"
        f"<p>Protocol <strong>{e(protocol.id)}</strong>, version <strong>{e(protocol.version)}</strong>: "
        f"{len(protocol.rules)} rules. Every card of the tarlatamab CDS service links here to the rule that "
        "produced it.</p>"
        f"<p>FDA label: {label}</p></header><main>"
        '<nav><h2 id="rules">Rules</h2><ul>' + index + "</ul></nav>" + rules + '<h2 id="parameters">Parameters</h2>'
        "<p>The numbers the rules use, as configured in this protocol version.</p>"
        f"<table><tr><th>Parameter</th><th>Value</th></tr>{params}</table>"
        "</main></body></html>\n"
    )


# --- card preview ------------------------------------------------------------------------------------
_CARD_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;background:#eef1f4;color:#1b1f24}
main{max-width:52rem;margin:0 auto;padding:1.5rem}h1{font-size:1.3rem}.req{color:#46505a;margin:1.5rem 0 .5rem}
.card{background:#fff;border:1px solid #d7dbe0;border-left:.45rem solid #1565c0;border-radius:.4rem;
padding:.8rem 1.1rem;margin:.8rem 0;box-shadow:0 1px 2px rgba(0,0,0,.06)}
.card.critical{border-left-color:#c62828}.card.warning{border-left-color:#ef8f00}
.summary{font-weight:600;font-size:1.05rem;margin-bottom:.3rem}.meta{font-size:.8rem;color:#5b6670}
.detail{font-size:.92rem}.detail p{margin:.45rem 0}.detail ul{margin:.3rem 0;padding-left:1.3rem}
.badge{display:inline-block;padding:.05rem .5rem;border-radius:1rem;font-size:.78rem;color:#fff;margin-right:.4rem}
.b-critical{background:#c62828}.b-warning{background:#ef8f00}.b-info{background:#1565c0}
.actions button{margin:.3rem .4rem 0 0;padding:.3rem .7rem;border-radius:.3rem;border:1px solid #12355b;
background:#12355b;color:#fff;font-size:.85rem}.actions button.link{background:#fff;color:#12355b}
.none{color:#46505a;font-style:italic}
"""


def preview_page(responses: list[tuple[str, dict[str, Any]]]) -> str:
    """Cards of CDS Hooks responses as an EHR would show them (Markdown rendered, raw HTML not allowed)."""
    e = html.escape
    md = MarkdownIt("commonmark", {"html": False, "linkify": False})
    parts = []
    for title, body in responses:
        parts.append(f'<h2 class="req">{e(title)}</h2>')
        cards = body.get("cards") or []
        if not cards:
            parts.append('<p class="none">No cards.</p>')
        for card in cards:
            indicator = str(card.get("indicator", "info"))
            source = card.get("source") or {}
            topic = (source.get("topic") or {}).get("code", "")
            buttons = "".join(f"<button>{e(str(s.get('label', '')))}</button>" for s in card.get("suggestions", []))
            links = "".join(
                f'<button class="link">{e(str(link.get("label", "")))}</button>' for link in card.get("links", [])
            )
            source_link = (
                f'<a href="{e(str(source["url"]))}">{e(str(source.get("label", "Source")))}</a>'
                if source.get("url")
                else e(str(source.get("label", "")))
            )
            parts.append(
                f'<div class="card {e(indicator)}"><div class="summary"><span class="badge b-{e(indicator)}">'
                f"{e(indicator)}</span>{e(str(card.get('summary', '')))}</div>"
                f'<div class="meta">topic {e(str(topic))} · Source: {source_link}</div>'
                f'<div class="detail">{md.render(str(card.get("detail", "")))}</div>'
                f'<div class="actions">{buttons}{links}</div></div>'
            )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>Tarlatamab CDS cards preview</title>'
        f"<style>{_CARD_STYLE}</style></head><body><main><h1>Tarlatamab CDS cards preview</h1>"
        + "".join(parts)
        + "</main></body></html>\n"
    )
