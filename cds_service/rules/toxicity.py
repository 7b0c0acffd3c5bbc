"""Cytokine release syndrome and neurologic toxicity (clinical specification sections 6.2 and 7.2).

The rules read the toxicity episodes of the facts (Conditions and grade/ICE observations, see
`facts_clinical`). Grade 1-2 CRS that resolved needs no card here; the monitoring escalation after Grade 2
and the step-up re-initiation after a first Grade 3 CRS belong to the monitoring and dose rules.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from ..facts import DraftOrder, PatientFacts, ToxicityEpisode
from ..facts.toxicity import merge_overlapping
from ..findings import Evidence, Finding, SuggestionSpec
from ..protocol import Protocol
from ..units import analyte_label
from . import EvaluationContext, labs

_KIND_NAME = {"crs": "CRS", "icans": "ICANS", "neurotox": "neurologic toxicity"}


def _day(moment: datetime | None) -> str:
    return moment.date().isoformat() if moment is not None else "date not recorded"


def grade_text(episode: ToxicityEpisode) -> str:
    return f"{episode.grade} (grade not specified)" if episode.unspecified else str(episode.grade)


def episode_evidence(episode: ToxicityEpisode) -> Evidence:
    if episode.active:
        state = "active"
    elif episode.resolved_at is not None:
        state = f"resolved {_day(episode.resolved_at)}"
    else:
        state = "resolved (date not recorded)"
    if not episode.active and episode.improved_at is not None and episode.improved_at != episode.resolved_at:
        state += f", improved {_day(episode.improved_at)}"
    if episode.preliminary:
        state += " (preliminary result)"
    return Evidence(
        label=f"{_KIND_NAME[episode.kind]} episode",
        value=f"Grade {grade_text(episode)}, {state}",
        date=f"onset {_day(episode.onset)}",
        reference=", ".join(episode.references) or None,
    )


def _delete(order: DraftOrder) -> SuggestionSpec:
    return SuggestionSpec("delete-order", order.resource_id)


def _current(episodes: list[ToxicityEpisode], now: datetime) -> list[ToxicityEpisode]:
    return [e for e in episodes if e.onset <= now]


# --- CRS ---------------------------------------------------------------------------------------------
def check_crs(facts: PatientFacts, order: DraftOrder, protocol: Protocol, ctx: EvaluationContext) -> list[Finding]:
    crs = _current([e for e in facts.episodes if e.kind == "crs"], ctx.now)
    findings: list[Finding] = []
    active = [e for e in crs if e.active]
    if active:
        worst = max(active, key=lambda e: (e.grade, e.onset))
        values = {"grade": grade_text(worst), "onset_date": _day(worst.onset)}
        evidence = tuple(episode_evidence(e) for e in active)
        findings.append(Finding("crs.active", order.resource_id, values, evidence, (_delete(order),)))
        findings.append(electrolytes_line(facts, order, protocol, ctx, values, evidence))
    grade4 = [e for e in crs if e.grade >= 4]
    if grade4:
        latest = grade4[-1]
        findings.append(
            Finding(
                "crs.grade4",
                order.resource_id,
                {"grade": grade_text(latest), "onset_date": _day(latest.onset)},
                tuple(episode_evidence(e) for e in grade4),
                (_delete(order),),
            )
        )
    grade3 = [e for e in crs if e.grade == 3]
    if len(grade3) >= 2:
        findings.append(
            Finding(
                "crs.grade3-recurrent",
                order.resource_id,
                {"first_date": _day(grade3[0].onset), "second_date": _day(grade3[-1].onset), "count": len(grade3)},
                tuple(episode_evidence(e) for e in grade3),
                (_delete(order),),
            )
        )
    return findings


def electrolytes_line(
    facts: PatientFacts,
    order: DraftOrder,
    protocol: Protocol,
    ctx: EvaluationContext,
    values: dict[str, object],
    evidence: tuple[Evidence, ...],
) -> Finding:
    """Sodium, potassium and uric acid while CRS is active: an info line of the CRS card (section 13.8), with
    the results of the lab window or what is missing; the dose is withheld anyway."""
    start = labs.window_start(order, protocol)
    lines: list[Evidence] = []
    missing: list[str] = []
    for analyte in protocol.section("labs")["crs_required"]:
        result = labs.latest_usable(facts.labs.get(analyte, ()), start, ctx.now)
        if result is None:
            missing.append(analyte_label(analyte))
            lines.append(Evidence(analyte_label(analyte), f"no result since {start.isoformat()}"))
        else:
            lines.append(labs.result_evidence(result))
    status = f"not available: {', '.join(missing)}" if missing else "all available"
    return Finding(
        "crs.electrolytes",
        order.resource_id,
        {**values, "electrolytes": status},
        (*evidence, *lines),
    )


# --- neurologic toxicity -----------------------------------------------------------------------------
def neuro_episodes(facts: PatientFacts, now: datetime) -> list[ToxicityEpisode]:
    """ICANS and other neurologic toxicity as one history; overlapping records of one event merged."""
    return merge_overlapping(_current([e for e in facts.episodes if e.kind in ("icans", "neurotox")], now))


def improved_within(episode: ToxicityEpisode, days: int) -> bool | None:
    """Whether the episode improved within `days` of onset; None when the improvement date is unknown."""
    if episode.improved_at is None:
        return None
    return episode.improved_at - episode.onset <= timedelta(days=days)


def _given_after(facts: PatientFacts, moment: datetime) -> bool:
    return any(a.start > moment for a in facts.administrations)


def check_neurotoxicity(
    facts: PatientFacts, order: DraftOrder, protocol: Protocol, ctx: EvaluationContext
) -> list[Finding]:
    days = int(protocol.section("toxicity")["neurotox_grade3_improvement_days"])
    limit = timedelta(days=days)
    episodes = neuro_episodes(facts, ctx.now)
    findings: list[Finding] = []
    delete = (_delete(order),)

    def finding(
        rule_id: str, episode: ToxicityEpisode, suggestions: tuple[SuggestionSpec, ...], **extra: object
    ) -> Finding:
        values: dict[str, object] = {
            "grade": grade_text(episode),
            "toxicity": _KIND_NAME[episode.kind],
            "onset_date": _day(episode.onset),
            "days_since_onset": (ctx.now - episode.onset).days,
            **extra,
        }
        return Finding(rule_id, order.resource_id, values, (episode_evidence(episode),), suggestions)

    for episode in [e for e in episodes if e.active and e.grade in (1, 2)][-1:]:
        suggestions = (*delete, SuggestionSpec("create-dexamethasone-neurotox", order.resource_id))
        findings.append(finding("neurotox.grade1-2-active", episode, suggestions))

    grade3 = [e for e in episodes if e.grade == 3]
    for episode in grade3:
        if episode.active:
            findings.append(finding("neurotox.grade3-active", episode, delete))
            if ctx.now - episode.onset > limit and not improved_within(episode, days):
                findings.append(
                    finding(
                        "neurotox.grade3-not-improved",
                        episode,
                        delete,
                        improvement=f"still Grade 3 after {(ctx.now - episode.onset).days} days",
                    )
                )
        elif improved_within(episode, days) is False:
            assert episode.improved_at is not None
            findings.append(
                finding(
                    "neurotox.grade3-not-improved",
                    episode,
                    delete,
                    improvement=f"first improvement on {_day(episode.improved_at)}, "
                    f"{(episode.improved_at - episode.onset).days} days after onset",
                )
            )

    if len(grade3) >= 2:
        findings.append(
            Finding(
                "neurotox.grade3-recurrent",
                order.resource_id,
                {
                    "toxicity": "neurologic toxicity",
                    "first_date": _day(grade3[0].onset),
                    "second_date": _day(grade3[-1].onset),
                },
                tuple(episode_evidence(e) for e in grade3),
                delete,
            )
        )
    elif len(grade3) == 1 and not grade3[0].active and improved_within(grade3[0], days) is not False:
        episode = grade3[0]
        cleared_by_dosing = _given_after(facts, episode.improved_at or episode.onset)
        if not cleared_by_dosing:
            known = episode.improved_at is not None
            findings.append(
                finding(
                    "neurotox.grade3-clearance",
                    episode,
                    delete,
                    improved_date=_day(episode.improved_at),
                    **({} if known else {"variant": "improvement-date-unknown"}),
                )
            )

    grade4 = [e for e in episodes if e.grade >= 4]
    if grade4:
        findings.append(
            Finding(
                "neurotox.grade4",
                order.resource_id,
                {
                    "grade": grade_text(grade4[-1]),
                    "toxicity": _KIND_NAME[grade4[-1].kind],
                    "onset_date": _day(grade4[-1].onset),
                },
                tuple(episode_evidence(e) for e in grade4),
                delete,
            )
        )
    return findings
