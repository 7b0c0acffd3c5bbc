"""The alert report: what the audit log and the card feedback of the configured store say, for a CDS
governance committee.

Figures: cards per rule and indicator per week, acceptance and override rates per rule with the override
reasons chosen, suggestions accepted, evaluation time p50/p99 per service, requests answered with errors,
each split by protocol version where it matters. Only identifiers the committee needs are read: rule ids,
indicators, card and suggestion uuids (for the joins), services, statuses, times, protocol versions, override
reason codes. Patient ids, issuers, user comments and the data origin are never read, so none can be shown.

Queries are SQLAlchemy Core on the store's tables (SQLite or PostgreSQL); the cards of an audit row are JSON
text and are unpacked here, the same way on every database.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import select
from sqlalchemy.engine import Engine

from ..store import audit_table, feedback_table

INDICATORS = ("critical", "warning", "info")
UNRECORDED = "unrecorded"


@dataclass(frozen=True)
class RuleFeedback:
    """Cards of one rule and what clinicians did with them (each card counted once per outcome)."""

    shown: int = 0
    accepted: int = 0
    overridden: int = 0

    @property
    def acceptance_rate(self) -> float | None:
        return self.accepted / self.shown if self.shown else None

    @property
    def override_rate(self) -> float | None:
        return self.overridden / self.shown if self.shown else None

    @property
    def no_feedback(self) -> int:
        return max(0, self.shown - self.accepted - self.overridden)


@dataclass(frozen=True)
class Timing:
    requests: int
    p50_ms: float
    p99_ms: float


@dataclass
class Report:
    generated_at: datetime
    since: datetime | None
    database: str
    total_requests: int = 0
    total_cards: int = 0
    total_feedback: int = 0
    unmatched_feedback: int = 0
    weeks: list[date] = field(default_factory=list)
    cards_by_week_indicator: Counter[tuple[date, str]] = field(default_factory=Counter)
    cards_by_rule_indicator: Counter[tuple[str, str]] = field(default_factory=Counter)
    cards_by_rule_week: Counter[tuple[str, date]] = field(default_factory=Counter)
    cards_by_version_rule: Counter[tuple[str, str]] = field(default_factory=Counter)
    requests_by_version: Counter[str] = field(default_factory=Counter)
    feedback_by_rule: dict[str, RuleFeedback] = field(default_factory=dict)
    feedback_by_version_rule: dict[tuple[str, str], RuleFeedback] = field(default_factory=dict)
    override_reasons: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # rule, code, display
    suggestions_offered: Counter[tuple[str, str]] = field(default_factory=Counter)  # rule, action
    suggestions_accepted: Counter[tuple[str, str]] = field(default_factory=Counter)
    timing: dict[str, Timing] = field(default_factory=dict)
    timing_by_version: dict[tuple[str, str], Timing] = field(default_factory=dict)
    errors_by_service_status: Counter[tuple[str, int]] = field(default_factory=Counter)
    errors_by_week_status: Counter[tuple[date, int]] = field(default_factory=Counter)
    errors_by_version: Counter[str] = field(default_factory=Counter)

    @property
    def rules(self) -> list[str]:
        return sorted({rule for rule, _ in self.cards_by_rule_indicator})

    @property
    def versions(self) -> list[str]:
        return sorted(self.requests_by_version)

    @property
    def total_errors(self) -> int:
        return sum(self.errors_by_service_status.values())


def week_of(moment: datetime) -> date:
    """The Monday (UTC) of the ISO week of `moment`."""
    day = moment.astimezone(UTC).date()
    return day - timedelta(days=day.weekday())


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (the smallest value with at least p % of the values at or below it)."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def _timing(values: list[float]) -> Timing:
    return Timing(requests=len(values), p50_ms=percentile(values, 50), p99_ms=percentile(values, 99))


def build_report(engine: Engine, *, since: datetime | None, generated_at: datetime) -> Report:
    """Read the audit log and the feedback of the store behind `engine` and compute every figure."""
    report = Report(generated_at=generated_at, since=since, database=engine.dialect.name)
    audit = audit_table.c
    query = select(audit.at, audit.service_id, audit.status, audit.evaluation_ms, audit.cards, audit.protocol_version)
    if since is not None:
        query = query.where(audit.at >= since)
    fb = feedback_table.c
    feedback_query = select(
        fb.service_id, fb.card_uuid, fb.outcome, fb.accepted_suggestions, fb.override_reason_code,
        fb.override_reason_display, fb.received_at,
    )  # fmt: skip
    with engine.connect() as conn:
        audit_rows = conn.execute(query.order_by(audit.id)).all()
        feedback_rows = conn.execute(feedback_query.order_by(fb.id)).all()

    cards: dict[tuple[str, str], tuple[str, str, dict[str, str]]] = {}  # (service, uuid) -> rule, version, sugg
    shown_by_rule: Counter[str] = Counter()
    shown_by_version_rule: Counter[tuple[str, str]] = Counter()
    times: dict[str, list[float]] = defaultdict(list)
    times_by_version: dict[tuple[str, str], list[float]] = defaultdict(list)
    weeks: set[date] = set()
    for row in audit_rows:
        version = row.protocol_version or UNRECORDED
        week = week_of(row.at)
        weeks.add(week)
        report.total_requests += 1
        report.requests_by_version[version] += 1
        if row.status != 200:
            report.errors_by_service_status[(row.service_id, row.status)] += 1
            report.errors_by_week_status[(week, row.status)] += 1
            report.errors_by_version[version] += 1
            continue
        times[row.service_id].append(float(row.evaluation_ms))
        times_by_version[(version, row.service_id)].append(float(row.evaluation_ms))
        for card in orjson.loads(row.cards or "[]"):
            rule, indicator = str(card.get("rule")), str(card.get("indicator"))
            report.total_cards += 1
            report.cards_by_week_indicator[(week, indicator)] += 1
            report.cards_by_rule_indicator[(rule, indicator)] += 1
            report.cards_by_rule_week[(rule, week)] += 1
            report.cards_by_version_rule[(version, rule)] += 1
            shown_by_rule[rule] += 1
            shown_by_version_rule[(version, rule)] += 1
            suggestions = {}
            for suggestion in card.get("suggestions") or ():
                action = str(suggestion.get("action") or "unknown")
                suggestions[str(suggestion.get("uuid"))] = action
                report.suggestions_offered[(rule, action)] += 1
            cards[(row.service_id, str(card.get("uuid")))] = (rule, version, suggestions)
    report.weeks = sorted(weeks)

    accepted: set[tuple[str, str]] = set()
    overridden: set[tuple[str, str]] = set()
    accepted_suggestions: set[tuple[str, str, str]] = set()
    for item in feedback_rows:
        key = (item.service_id, item.card_uuid)
        if key not in cards:
            if since is None or item.received_at >= since:
                report.unmatched_feedback += 1
            continue
        report.total_feedback += 1
        rule, _, suggestions = cards[key]
        if item.outcome == "accepted":
            accepted.add(key)
            for suggestion_uuid in orjson.loads(item.accepted_suggestions or "[]"):
                if suggestion_uuid in suggestions and (*key, suggestion_uuid) not in accepted_suggestions:
                    accepted_suggestions.add((*key, suggestion_uuid))
                    report.suggestions_accepted[(rule, suggestions[suggestion_uuid])] += 1
        elif item.outcome == "overridden":
            overridden.add(key)
            code = item.override_reason_code or "(no reason given)"
            report.override_reasons[(rule, code, item.override_reason_display or "")] += 1

    def tally(keys: set[tuple[str, str]]) -> tuple[Counter[str], Counter[tuple[str, str]]]:
        by_rule: Counter[str] = Counter()
        by_version: Counter[tuple[str, str]] = Counter()
        for key in keys:
            rule, version, _ = cards[key]
            by_rule[rule] += 1
            by_version[(version, rule)] += 1
        return by_rule, by_version

    acc_rule, acc_version = tally(accepted)
    ovr_rule, ovr_version = tally(overridden)
    report.feedback_by_rule = {
        rule: RuleFeedback(shown=n, accepted=acc_rule[rule], overridden=ovr_rule[rule])
        for rule, n in sorted(shown_by_rule.items())
    }
    report.feedback_by_version_rule = {
        key: RuleFeedback(shown=n, accepted=acc_version[key], overridden=ovr_version[key])
        for key, n in sorted(shown_by_version_rule.items())
    }
    report.timing = {service: _timing(values) for service, values in sorted(times.items())}
    report.timing_by_version = {key: _timing(values) for key, values in sorted(times_by_version.items())}
    return report


def render_html(report: Report) -> str:
    from .report_html import render

    return render(report)


def summary_counts(report: Report) -> dict[str, Any]:
    """The headline figures (for logs and tests)."""
    return {
        "requests": report.total_requests,
        "cards": report.total_cards,
        "feedback": report.total_feedback,
        "errors": report.total_errors,
        "versions": report.versions,
    }
