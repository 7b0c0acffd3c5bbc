"""The alert report as one self-contained HTML page: inline CSS and inline SVG charts, no script, no
external asset. Every text is escaped."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import date
from html import escape

from .report import INDICATORS, Report, RuleFeedback

COLORS = {"critical": "#b2182b", "warning": "#e08214", "info": "#2166ac"}
PALETTE = ("#2166ac", "#e08214", "#b2182b", "#1b7837", "#762a83", "#8c510a", "#4d4d4d")
FONT = "font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif"

CSS = (
    "body{" + FONT + ";margin:24px auto;max-width:1100px;color:#222;line-height:1.4;padding:0 16px}"
    "h1{font-size:1.6em;margin-bottom:4px}"
    "h2{font-size:1.25em;margin-top:36px;border-bottom:1px solid #ddd;padding-bottom:4px}"
    ".meta{color:#555;font-size:.92em}.tiles{display:flex;gap:12px;flex-wrap:wrap;margin:18px 0}"
    ".tile{border:1px solid #ddd;border-radius:6px;padding:10px 16px;min-width:130px}"
    ".tile b{display:block;font-size:1.6em}.tile span{color:#555;font-size:.88em}"
    "table{border-collapse:collapse;margin:10px 0;font-size:.9em}th,td{border:1px solid #ddd;padding:4px 8px}"
    "th{background:#f4f4f4;text-align:left}td.n{text-align:right;font-variant-numeric:tabular-nums}"
    ".chart{margin:8px 0}.note{color:#555;font-size:.88em}"
)


def _n(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.1f}"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.0f} %"


def _week(day: date) -> str:
    return day.isoformat()


def nice_ticks(peak: float, count: int = 4) -> list[float]:
    """Round axis ticks from 0 to at least `peak`: steps of 1, 2 or 5 times a power of ten."""
    if peak <= 0:
        return [0.0, 1.0]
    rough = peak / count
    power = 10 ** math.floor(math.log10(rough))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= rough)
    if step < 1 and peak >= 1:
        step = 1.0
    return [step * i for i in range(math.ceil(peak / step) + 1)]


def _legend(items: Sequence[tuple[str, str]], x: float, y: float) -> str:
    out = []
    for i, (label, color) in enumerate(items):
        lx = x + i * 130
        out.append(f'<rect x="{lx}" y="{y - 10}" width="12" height="12" fill="{color}"/>')
        out.append(f'<text x="{lx + 16}" y="{y}" font-size="12">{escape(label)}</text>')
    return "".join(out)


def stacked_columns(
    title: str, categories: Sequence[str], series: Sequence[tuple[str, str, Sequence[float]]], height: int = 260
) -> str:
    """Vertical stacked bars: one column per category, one colored segment per series."""
    if not categories:
        return '<p class="note">No data in this period.</p>'
    width = max(520, 70 + 56 * len(categories))
    top, bottom, left = 60, 60, 50
    plot_h = height - top - bottom
    totals = [sum(s[2][i] for s in series) for i in range(len(categories))]
    ticks = nice_ticks(max(totals))
    peak = ticks[-1]
    step = (width - left - 20) / len(categories)
    bar = min(36, step * 0.7)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{escape(title)}" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" style="{FONT}">',
        f'<text x="{left}" y="16" font-size="14" font-weight="600">{escape(title)}</text>',
        _legend([(name, color) for name, color, _ in series], left, 34),
        f'<line x1="{left}" y1="{top + plot_h}" x2="{width - 10}" y2="{top + plot_h}" stroke="#888"/>',
    ]
    for value in ticks:
        y = top + plot_h - plot_h * value / peak
        parts.append(f'<text x="{left - 6}" y="{y + 4}" font-size="10" text-anchor="end">{_n(value)}</text>')
        parts.append(f'<line x1="{left}" y1="{y}" x2="{width - 10}" y2="{y}" stroke="#eee"/>')
    for i, category in enumerate(categories):
        x = left + step * i + (step - bar) / 2
        y = top + plot_h
        for name, color, values in series:
            v = values[i]
            if v <= 0:
                continue
            h = plot_h * v / peak
            y -= h
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{h:.1f}" fill="{color}">'
                f"<title>{escape(category)} {escape(name)}: {_n(v)}</title></rect>"
            )
        parts.append(
            f'<text x="{x + bar / 2:.1f}" y="{top + plot_h + 14}" font-size="10" text-anchor="end" '
            f'transform="rotate(-35 {x + bar / 2:.1f} {top + plot_h + 14})">{escape(category)}</text>'
        )
        if totals[i]:
            parts.append(
                f'<text x="{x + bar / 2:.1f}" y="{y - 3:.1f}" font-size="10" text-anchor="middle">'
                f"{_n(totals[i])}</text>"
            )
    parts.append("</svg>")
    return '<div class="chart">' + "".join(parts) + "</div>"


def horizontal_bars(
    title: str,
    labels: Sequence[str],
    series: Sequence[tuple[str, str, Sequence[float]]],
    *,
    stacked: bool = True,
    maximum: float | None = None,
    unit: str = "",
) -> str:
    """One row per label; stacked segments, or grouped bars (stacked=False)."""
    if not labels:
        return '<p class="note">No data in this period.</p>'
    label_w, width = 260, 900
    row_h = 22 if stacked else 12 * len(series) + 8
    top = 44
    height = top + row_h * len(labels) + 16
    plot_w = width - label_w - 70
    if maximum is None:
        maximum = max(
            (sum(s[2][i] for s in series) if stacked else max(s[2][i] for s in series)) for i in range(len(labels))
        )
    maximum = maximum or 1
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{escape(title)}" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" style="{FONT}">',
        f'<text x="0" y="16" font-size="14" font-weight="600">{escape(title)}</text>',
        _legend([(name, color) for name, color, _ in series], label_w, 34),
    ]
    for i, label in enumerate(labels):
        y0 = top + row_h * i
        parts.append(
            f'<text x="{label_w - 8}" y="{y0 + row_h / 2 + 4}" font-size="11" text-anchor="end">{escape(label)}</text>'
        )
        x = float(label_w)
        for j, (name, color, values) in enumerate(series):
            v = values[i]
            w = plot_w * v / maximum
            if stacked:
                y, h = y0 + 3, row_h - 6
            else:
                y, h = y0 + 4 + 12 * j, 10
                x = float(label_w)
            if v > 0:
                parts.append(
                    f'<rect x="{x:.1f}" y="{y}" width="{max(w, 1):.1f}" height="{h}" fill="{color}">'
                    f"<title>{escape(label)} {escape(name)}: {_n(v)}{unit}</title></rect>"
                )
            if not stacked:
                parts.append(f'<text x="{x + w + 4:.1f}" y="{y + 9}" font-size="9">{_n(v)}{unit}</text>')
            if stacked:
                x += w
        if stacked:
            total = sum(s[2][i] for s in series)
            parts.append(f'<text x="{x + 4:.1f}" y="{y0 + row_h / 2 + 4}" font-size="10">{_n(total)}{unit}</text>')
    parts.append("</svg>")
    return '<div class="chart">' + "".join(parts) + "</div>"


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]], numeric_from: int = 1) -> str:
    if not rows:
        return '<p class="note">None in this period.</p>'
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            css = ' class="n"' if i >= numeric_from else ""
            cells.append(f"<td{css}>{escape(str(cell))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _feedback_row(label: Sequence[str], fb: RuleFeedback) -> list[object]:
    return [*label, fb.shown, fb.accepted, _pct(fb.acceptance_rate), fb.overridden, _pct(fb.override_rate),
            fb.no_feedback]  # fmt: skip


def render(report: Report) -> str:
    r = report
    weeks = [_week(w) for w in r.weeks]
    rules = r.rules
    period = f"from {r.since.date().isoformat()}" if r.since else "all records"
    sections = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>Tarlatamab CDS alert report</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>Tarlatamab CDS alert report</h1>",
        f'<p class="meta">Audit log and card feedback of the service\'s {escape(r.database)} store, {period}; '
        f"generated {escape(r.generated_at.strftime('%Y-%m-%d %H:%M UTC'))}. Protocol versions: "
        f"{escape(', '.join(r.versions) or 'none')}. Weeks start on Monday (UTC). No patient identifier, clinical "
        "value, user comment or token is read into this report.</p>",
        '<div class="tiles">',
        *(
            f'<div class="tile"><b>{_n(v)}</b><span>{escape(label)}</span></div>'
            for label, v in (
                ("requests answered", r.total_requests),
                ("cards shown", r.total_cards),
                ("feedback items", r.total_feedback),
                ("requests with errors", r.total_errors),
            )
        ),
        "</div>",
        '<h2 id="weekly">Cards per week, by indicator</h2>',
        stacked_columns(
            "Cards per week",
            weeks,
            [(ind, COLORS[ind], [r.cards_by_week_indicator[(w, ind)] for w in r.weeks]) for ind in INDICATORS],
        ),
        '<h2 id="rules">Cards per rule, by indicator</h2>',
        horizontal_bars(
            "Cards per rule",
            rules,
            [(ind, COLORS[ind], [r.cards_by_rule_indicator[(rule, ind)] for rule in rules]) for ind in INDICATORS],
        ),
        _table(
            ["rule", *INDICATORS, *weeks, "total"],
            [
                [
                    rule,
                    *(r.cards_by_rule_indicator[(rule, ind)] for ind in INDICATORS),
                    *(r.cards_by_rule_week[(rule, w)] for w in r.weeks),
                    sum(r.cards_by_rule_indicator[(rule, ind)] for ind in INDICATORS),
                ]
                for rule in rules
            ],
        ),
        '<h2 id="feedback">Acceptance and override per rule</h2>',
        '<p class="note">Rates are cards with at least one such feedback item over the cards shown. A card '
        "counts once per outcome however often the EHR reported it.</p>",
        horizontal_bars(
            "Acceptance and override rates per rule",
            rules,
            [
                ("accepted", "#1b7837", [100 * (r.feedback_by_rule[x].acceptance_rate or 0) for x in rules]),
                ("overridden", "#b2182b", [100 * (r.feedback_by_rule[x].override_rate or 0) for x in rules]),
            ],
            stacked=False,
            maximum=100,
            unit=" %",
        ),
        _table(
            ["rule", "cards", "accepted", "acceptance", "overridden", "override", "no feedback"],
            [_feedback_row([rule], r.feedback_by_rule[rule]) for rule in rules],
        ),
        "<h3>Override reasons chosen</h3>",
        _table(
            ["rule", "reason code", "reason", "times"],
            [[rule, code, display, n] for (rule, code, display), n in sorted(r.override_reasons.items())],
            numeric_from=3,
        ),
        "<h3>Suggestions accepted</h3>",
        _table(
            ["rule", "suggested action", "offered", "accepted", "rate"],
            [
                [
                    rule,
                    action,
                    offered,
                    r.suggestions_accepted[(rule, action)],
                    _pct(r.suggestions_accepted[(rule, action)] / offered if offered else None),
                ]
                for (rule, action), offered in sorted(r.suggestions_offered.items())
            ],
            numeric_from=2,
        ),
        (
            f'<p class="note">{r.unmatched_feedback} feedback item(s) name a card that is not in the audit log of '
            "this period (shown earlier, or not audited).</p>"
            if r.unmatched_feedback
            else ""
        ),
        '<h2 id="timing">Evaluation time per service</h2>',
        horizontal_bars(
            "Evaluation time (ms)",
            list(r.timing),
            [
                ("p50", PALETTE[0], [t.p50_ms for t in r.timing.values()]),
                ("p99", PALETTE[1], [t.p99_ms for t in r.timing.values()]),
            ],
            stacked=False,
            unit=" ms",
        ),
        _table(
            ["service", "requests", "p50 ms", "p99 ms"],
            [[s, t.requests, f"{t.p50_ms:.1f}", f"{t.p99_ms:.1f}"] for s, t in r.timing.items()],
        ),
        '<h2 id="errors">Requests answered with errors</h2>',
        _errors(r),
        '<h2 id="versions">By protocol version</h2>',
        _versions(r),
        "</body></html>",
    ]
    return "\n".join(s for s in sections if s) + "\n"


def _errors(r: Report) -> str:
    if not r.total_errors:
        return '<p class="note">No request was answered with an error in this period.</p>'
    statuses = sorted({status for _, status in r.errors_by_service_status})
    chart = stacked_columns(
        "Requests answered with errors, per week",
        [_week(w) for w in r.weeks],
        [
            (str(status), PALETTE[i % len(PALETTE)], [r.errors_by_week_status[(w, status)] for w in r.weeks])
            for i, status in enumerate(statuses)
        ],
        height=220,
    )
    table = _table(
        ["service", "HTTP status", "requests"],
        [[service, status, n] for (service, status), n in sorted(r.errors_by_service_status.items())],
        numeric_from=1,
    )
    return chart + table


def _versions(r: Report) -> str:
    versions = r.versions
    rules = r.rules
    chart = horizontal_bars(
        "Cards per rule and protocol version",
        rules,
        [
            (v, PALETTE[i % len(PALETTE)], [r.cards_by_version_rule[(v, rule)] for rule in rules])
            for i, v in enumerate(versions)
        ],
    )
    totals = _table(
        ["protocol version", "requests", "cards", "errors"],
        [
            [
                v,
                r.requests_by_version[v],
                sum(n for (ver, _), n in r.cards_by_version_rule.items() if ver == v),
                r.errors_by_version[v],
            ]
            for v in versions
        ],
    )
    feedback = _table(
        ["protocol version", "rule", "cards", "accepted", "acceptance", "overridden", "override", "no feedback"],
        [_feedback_row([v, rule], fb) for (v, rule), fb in r.feedback_by_version_rule.items()],
        numeric_from=2,
    )
    timing = _table(
        ["protocol version", "service", "requests", "p50 ms", "p99 ms"],
        [[v, s, t.requests, f"{t.p50_ms:.1f}", f"{t.p99_ms:.1f}"] for (v, s), t in r.timing_by_version.items()],
        numeric_from=2,
    )
    return chart + totals + "<h3>Feedback by version</h3>" + feedback + "<h3>Evaluation time by version</h3>" + timing
