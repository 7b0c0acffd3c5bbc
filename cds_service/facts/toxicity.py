"""CRS, ICANS and other neurologic toxicity: grade records and episodes (spec sections 6, 7, 10, 13.3-13.5).

Grade records are read from Conditions (ICD-10-CM D89.83x, G92.0x) and from the local grade observations
(`crs-grade`, `icans-grade`, `neurotox-grade`, `ice-score`).

- Status: a preliminary grade may raise a finding but never resolves one (a preliminary grade 0 is ignored).
- ICE scores and recorded ICANS grades are separate series (13.3): a recorded grade stays active until a
  later recorded grade 0 or the Condition's resolution (a later ICE 10 does not resolve it); an episode known
  only from ICE scores resolves at a later ICE 10.
- One episode or two (13.4): records of the same toxicity (CRS, or ICANS / neurologic) are one episode unless
  a resolution is recorded between their onsets (a grade-0 observation, a Condition abatement, or a Condition
  recorded resolved). A Condition and the grade observations of the same event are one episode.
- Improvement (13.5): the first grade <= 1 observation after the peak, or the resolution.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from datetime import UTC, date, datetime
from typing import Any

from ..fhir_validation import first_problem
from ..protocol import Protocol
from ..reading import observations as obs_reading
from ..reading.dates import When, event_sort_key
from ..reading.identity import reference_of
from ..reading.quantities import number_text
from .labs import future_issue
from .model import DataIssue, GradePoint, ToxicityEpisode

_KIND_OF_LOCAL = {"crs_grade": "crs", "icans_grade": "icans", "neurotox_grade": "neurotox", "ice_score": "icans"}
_KIND_LABEL = {"crs": "CRS grade", "icans": "ICANS grade", "neurotox": "neurologic toxicity grade"}
_MAX_TIME = datetime.max.replace(tzinfo=UTC)
IMPROVED_GRADE = 1  # "improved" = grade <= 1 (section 13.5)


def _integer_value(obs: dict[str, Any]) -> int | None:
    value = obs.get("valueInteger")
    if value is None and isinstance(obs.get("valueQuantity"), dict):
        value = obs["valueQuantity"].get("value")
        if isinstance(value, float) and value.is_integer():
            value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def ice_to_grade(score: int, protocol: Protocol) -> int | None:
    """ICANS grade of an ICE score (0-10) from the protocol table; None outside the table."""
    for row in protocol.section("toxicity")["ice_to_icans_grade"]:
        if row["min"] <= score <= row["max"]:
            return int(row["grade"])
    return None


def _issue(message: str, reference: str, element: str | None, label: str) -> DataIssue:
    return DataIssue("unusable", "observations", message, reference, element, label)


def grade_point(obs: dict[str, Any], local_kind: str, protocol: Protocol, issues: list[DataIssue]) -> GradePoint | None:
    kind = _KIND_OF_LOCAL[local_kind]
    label = "ICE score" if local_kind == "ice_score" else _KIND_LABEL[kind]
    reference = reference_of(obs)
    status = obs_reading.status_class(obs)
    if status == "not-a-result":
        return None
    if status == "malformed":
        issues.append(_issue(f"{label}: {obs_reading.MALFORMED_STATUS}; not used.", reference, "status", label))
        return None
    when = obs_reading.observation_when(obs)
    if when is None:
        issues.append(
            _issue(f"{label} without a readable date: not used.", reference, obs_reading.time_element(obs), label)
        )
        return None
    value = _integer_value(obs)
    toxicity = protocol.section("toxicity")
    if local_kind == "ice_score":
        low, high = int(toxicity["ice_score_min"]), int(toxicity["ice_score_max"])
        grade = ice_to_grade(value, protocol) if value is not None and low <= value <= high else None
    else:
        low, high = 0, int(toxicity["recorded_grade_max"])
        grade = value if value is not None and low <= value <= high else None
    if grade is None:
        quantity = obs.get("valueQuantity")
        raw = obs.get("valueInteger", quantity.get("value") if isinstance(quantity, dict) else None)
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            shown = f"value {number_text(raw)}, outside {low}-{high}"
        elif isinstance(raw, str):
            shown = f"the text '{raw}' where a number {low}-{high} belongs"
        else:
            shown = "no value" if raw is None else f"a value that is not a number {low}-{high}"
        issues.append(
            _issue(
                f"{label} of {when.local_date.isoformat()} has {shown}: invalid, not used.",
                reference,
                "valueInteger",
                label,
            )
        )
        return None
    problem = first_problem(obs, obs_reading.READ_ELEMENTS)
    if problem is not None:
        element, message = problem
        issues.append(_issue(f"{label} is not valid FHIR ({message}): not used.", reference, element, label))
        return None
    preliminary = status == "preliminary"
    if preliminary and grade == 0:
        return None  # a preliminary result never clears a toxicity
    return GradePoint(
        kind=kind,  # type: ignore[arg-type]
        grade=grade,
        at=when.moment,
        reference=reference,
        source="ice-score" if local_kind == "ice_score" else "grade-observation",
        ice_score=value if local_kind == "ice_score" else None,
        preliminary=preliminary,
        local_date=when.local_date,
        exact=when.exact,
    )


def observation_points(
    grouped: dict[str, list[dict[str, Any]]], protocol: Protocol, issues: list[DataIssue]
) -> list[GradePoint]:
    points: list[GradePoint] = []
    for local_kind in ("crs_grade", "icans_grade", "neurotox_grade", "ice_score"):
        for obs in grouped.get(local_kind, ()):
            point = grade_point(obs, local_kind, protocol, issues)
            if point is not None:
                points.append(point)
    return points


def _when(point: GradePoint) -> When:
    return When(point.local_date, point.at if point.exact else None)


def without_future_points(
    points: list[GradePoint], now: datetime, today: date, issues: list[DataIssue]
) -> list[GradePoint]:
    """The grades and ICE scores up to the time of the check; each one dated after it is reported, not used."""
    kept: list[GradePoint] = []
    for point in points:
        when = _when(point)
        if when.after(now, today):
            label = "ICE score" if point.source == "ice-score" else _KIND_LABEL[point.kind]
            issues.append(future_issue(label, when, point.reference, "observations"))
        else:
            kept.append(point)
    return kept


def episodes_from_series(points: list[GradePoint]) -> list[ToxicityEpisode]:
    """Episodes of one series (one kind, recorded grades or ICE scores): separated by a recorded grade 0.

    Points at the same time collapse to the highest grade. `improved_at` is the first grade <= 1 after the
    last time the peak was recorded; a grade-0 point resolves the episode.
    """
    by_time: dict[datetime, GradePoint] = {}
    for point in points:
        kept = by_time.get(point.at)
        if kept is None or point.grade > kept.grade:
            by_time[point.at] = point
    episodes: list[ToxicityEpisode] = []
    current: dict[str, Any] | None = None
    order = event_sort_key(_when(point) for point in by_time.values())
    for at in sorted(by_time, key=lambda at: order(_when(by_time[at]))):
        point = by_time[at]
        if point.grade == 0:
            if current is not None:
                current["refs"].append(point.reference)
                episodes.append(_close(current, resolved_at=at))
                current = None
            continue
        if current is None:
            current = {
                "kind": point.kind,
                "onset": at,
                "onset_date": point.local_date,
                "exact": point.exact,
                "peak": point.grade,
                "improved": None,
                "refs": [],
                "series": "ice" if point.source == "ice-score" else "recorded",
                "preliminary": point.preliminary,
            }
        elif point.grade >= current["peak"]:
            current["peak"] = point.grade
            current["improved"] = None
        elif current["improved"] is None and point.grade <= IMPROVED_GRADE:
            current["improved"] = at
        current["preliminary"] = current["preliminary"] and point.preliminary
        current["refs"].append(point.reference)
    if current is not None:
        episodes.append(_close(current, resolved_at=None))
    return episodes


def _close(current: dict[str, Any], resolved_at: datetime | None) -> ToxicityEpisode:
    improved = current["improved"] or resolved_at
    return ToxicityEpisode(
        kind=current["kind"],
        grade=current["peak"],
        onset=current["onset"],
        active=resolved_at is None,
        improved_at=improved,
        resolved_at=resolved_at,
        references=tuple(current["refs"]),
        onset_date=current["onset_date"],
        onset_exact=current["exact"],
        series=current["series"],
        preliminary=current["preliminary"],
    )


def episode_end(episode: ToxicityEpisode) -> datetime:
    """The last instant an episode is known to cover (open-ended while active)."""
    if episode.active:
        return _MAX_TIME
    return episode.resolved_at or episode.improved_at or episode.onset


def merge_episodes(members: list[ToxicityEpisode]) -> ToxicityEpisode:
    """One episode from several records of it; a graded record supersedes an 'unspecified' one."""
    graded = [m for m in members if not m.unspecified]
    peak_pool = graded or members
    grade = max(m.grade for m in peak_pool)
    peak_members = [m for m in peak_pool if m.grade == grade]
    conditions = [m for m in members if m.series == "condition"]
    condition_end = (
        max(m.resolved_at for m in conditions if m.resolved_at is not None)
        if conditions and all(not m.active and m.resolved_at is not None for m in conditions)
        else None
    )
    # A grade series of the same event is resolved by the Condition's resolution (section 13.3).
    active = any(m.active and not (condition_end is not None and m.onset <= condition_end) for m in members)
    improvements = [m.improved_at for m in peak_members if m.improved_at is not None]
    resolutions = [m.resolved_at for m in members if m.resolved_at is not None]
    kinds = [m.kind for m in peak_members]
    references: list[str] = []
    for m in members:
        references.extend(r for r in m.references if r not in references)
    first = min(members, key=lambda m: m.onset)
    return ToxicityEpisode(
        kind="icans" if "icans" in kinds else kinds[0],
        grade=grade,
        onset=first.onset,
        active=active,
        improved_at=min(improvements) if improvements else None,
        resolved_at=None if active or not resolutions else max(resolutions),
        unspecified=not graded,
        references=tuple(references),
        onset_date=first.onset_date,
        onset_exact=first.onset_exact,
        series="ice" if all(m.series == "ice" for m in members) else "recorded",
        preliminary=all(m.preliminary for m in members),
    )


def _resolution_between(group: list[ToxicityEpisode], later: ToxicityEpisode) -> bool:
    """Whether a resolution of `group` is recorded after its onset and by the onset of `later` (13.4)."""
    episode = group[0] if len(group) == 1 else merge_episodes(group)
    if episode.active or episode.resolved_at is None:
        return False
    return episode.onset < episode.resolved_at <= later.onset


def merge_records(episodes: Iterable[ToxicityEpisode]) -> list[ToxicityEpisode]:
    """Records of one toxicity merged into episodes: a new episode only after a recorded resolution (13.4)."""
    ordered = sorted(episodes, key=lambda e: (e.onset, e.references))
    out: list[ToxicityEpisode] = []
    group: list[ToxicityEpisode] = []
    for episode in ordered:
        if group and not _resolution_between(group, episode):
            group.append(episode)
            continue
        if group:
            out.append(group[0] if len(group) == 1 else merge_episodes(group))
        group = [episode]
    if group:
        out.append(group[0] if len(group) == 1 else merge_episodes(group))
    return out


def merge_overlapping(episodes: Iterable[ToxicityEpisode]) -> list[ToxicityEpisode]:
    """Episodes of one history (e.g. ICANS and other neurologic toxicity) merged as `merge_records` does."""
    return merge_records(episodes)


def absorb_ice(recorded: list[ToxicityEpisode], ice: list[ToxicityEpisode]) -> list[ToxicityEpisode]:
    """ICE-only episodes kept; an ICE episode overlapping a recorded ICANS episode only adds its references.

    The recorded series decides the grade and the resolution of such an episode (13.3).
    """
    out = list(recorded)
    for episode in ice:
        for index, rec in enumerate(out):
            if rec.onset <= episode_end(episode) and episode.onset <= episode_end(rec):
                refs = tuple(dict.fromkeys((*rec.references, *episode.references)))
                improved = rec.improved_at
                ice_improved = episode.onset if episode.grade <= IMPROVED_GRADE else episode.improved_at
                if ice_improved is not None and ice_improved >= rec.onset:
                    improved = ice_improved if improved is None else min(improved, ice_improved)
                out[index] = replace(rec, references=refs, improved_at=improved)
                break
        else:
            out.append(episode)
    return out


def name_later_ice(episodes: list[ToxicityEpisode], ice_points: list[GradePoint]) -> list[ToxicityEpisode]:
    """An active recorded ICANS episode names the ICE scores charted since its onset (a later ICE 10 does not
    resolve it, section 13.3: the card shows it)."""
    out = []
    for episode in episodes:
        if episode.active and episode.series != "ice":
            later = [p.reference for p in ice_points if p.at >= episode.onset]
            if later:
                episode = replace(episode, references=tuple(dict.fromkeys((*episode.references, *later))))
        out.append(episode)
    return out


def condition_episode(
    kind: str,
    grade: int,
    unspecified: bool,
    reference: str,
    active: bool,
    onset: When,
    resolved: When | None,
) -> tuple[ToxicityEpisode, GradePoint]:
    resolved_at = resolved.moment if resolved is not None and not active else None
    episode = ToxicityEpisode(
        kind=kind,  # type: ignore[arg-type]
        grade=grade,
        onset=onset.moment,
        active=active,
        improved_at=resolved_at,
        resolved_at=resolved_at,
        unspecified=unspecified,
        references=(reference,),
        onset_date=onset.local_date,
        onset_exact=onset.exact,
        series="condition",
    )
    point = GradePoint(
        kind=kind,  # type: ignore[arg-type]
        grade=grade,
        at=onset.moment,
        reference=reference,
        source="condition",
        unspecified=unspecified,
        local_date=onset.local_date,
        exact=onset.exact,
    )
    return episode, point


def build_episodes(
    points: list[GradePoint], condition_episodes: list[ToxicityEpisode]
) -> tuple[ToxicityEpisode, ...]:
    """All episodes, oldest first: each kind's series and Conditions merged per section 13.3-13.4."""
    merged: list[ToxicityEpisode] = []
    for kind in ("crs", "icans", "neurotox"):
        series = [p for p in points if p.kind == kind and p.source == "grade-observation"]
        recorded = episodes_from_series(series) + [e for e in condition_episodes if e.kind == kind]
        kind_episodes = merge_records(recorded)
        if kind == "icans":
            ice_points = [p for p in points if p.kind == kind and p.source == "ice-score"]
            ice = episodes_from_series(ice_points)
            kind_episodes = name_later_ice(merge_records(absorb_ice(kind_episodes, ice)), ice_points)
        merged.extend(kind_episodes)
    merged.sort(key=lambda e: (e.onset, e.kind))
    return tuple(merged)
