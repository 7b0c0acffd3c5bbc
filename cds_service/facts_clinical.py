"""Clinical facts from Patient, Observation and Condition resources (spec/protocol.md sections 6-10).

Selection is cheap dict work on codes; only the resources the rules read are validated with fhir.resources
(the newest results of each analyte down to the first usable one, toxicity grades, the relevant Conditions,
recent pregnancy evidence). Anything that cannot be interpreted is kept as unusable with a `DataIssue` (the
`data-quality` card) and, for laboratory results, a `LabResult.problem`: never dropped, never read as normal.

Decisions where the specification is silent (see also the module constants):
- Observation status: final, amended and corrected count. `preliminary` and any other status are kept as
  unusable (a preliminary result is not a result to dose on, but it must not vanish); registered, cancelled
  and entered-in-error never count. Conditions whose verificationStatus is refuted or entered-in-error never
  count.
- A value reported with a comparator ("<0.5") is a limit, not a value: unusable.
- A date-time without a time zone is read as UTC; a partial date (year or year-month) is unusable.
- ICE scores and icans-grade observations form one ICANS series (an ICE of 10 records "no ICANS"); an
  icans-grade recorded at exactly the same time as an ICE score takes precedence and the ICE point is dropped.
- Episodes of the same kind that overlap in time (e.g. a Condition and the grade observations of the same
  event, or the same CRS coded twice) are one episode, so that one event is never counted as a recurrence.
- A toxicity Condition without any onset or recorded date is kept (it can still be active) with onset = the
  evaluation time and a DataIssue.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from typing import Any

from .codes import codings, concept_text
from .facts import CodedCondition, DataIssue, GradePoint, LabResult, PregnancyEvidence, ToxicityEpisode
from .fhir_validation import first_problem
from .protocol import Protocol
from .units import analyte_label, canonical_unit, to_canonical

COUNTED_STATUSES = frozenset({"final", "amended", "corrected"})
IGNORED_STATUSES = frozenset({"registered", "cancelled", "entered-in-error"})
IGNORED_VERIFICATION = frozenset({"refuted", "entered-in-error"})
PREGNANCY_KEYS = ("pregnancy_status", "hcg_qualitative", "hcg_quantitative")
BREASTFEEDING_KEY = "breastfeeding"
# The local grade codes record grades 0-4 (spec section 10): the code system's range, not a threshold.
# At most this many newest results of one analyte are validated / reported as unusable (keeps requests fast
# and data-quality cards readable); the rules read the newest usable result.
READ_DEPTH = 10
ISSUE_DEPTH = 3

_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DATETIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})?$")
_MAX_TIME = datetime.max.replace(tzinfo=UTC)


@dataclass(frozen=True)
class ClinicalFacts:
    birth_date: date | None = None
    gender: str | None = None
    labs: dict[str, tuple[LabResult, ...]] = field(default_factory=dict)
    toxicity_points: tuple[GradePoint, ...] = ()
    episodes: tuple[ToxicityEpisode, ...] = ()
    pregnancy: tuple[PregnancyEvidence, ...] = ()
    breastfeeding: tuple[tuple[bool, datetime, str], ...] = ()
    sclc_diagnoses: tuple[CodedCondition, ...] = ()
    active_infections: tuple[CodedCondition, ...] = ()
    issues: tuple[DataIssue, ...] = ()


# --- small readers ----------------------------------------------------------------------------------
def parse_fhir_datetime(value: Any) -> tuple[datetime, date] | None:
    """(instant, calendar date as written) of a FHIR date or dateTime; None when absent, partial or invalid."""
    if not isinstance(value, str):
        return None
    return _parse_fhir_datetime_text(value)


@functools.lru_cache(maxsize=16384)  # a record's dates recur on every call for the same patient
def _parse_fhir_datetime_text(value: str) -> tuple[datetime, date] | None:
    text = value.strip()
    try:
        if _DATE_RE.match(text):
            day = date.fromisoformat(text)
            return datetime(day.year, day.month, day.day, tzinfo=UTC), day
        if _DATETIME_RE.match(text):
            moment = datetime.fromisoformat(text)
            written = moment.date()
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            return moment, written
    except ValueError:
        return None
    return None


def _items(value: Any) -> list[Any]:
    """A FHIR array element as a list (anything else, e.g. hostile input of the wrong type, as empty)."""
    return value if isinstance(value, list) else []


def _reference(resource: dict[str, Any]) -> str:
    return f"{resource.get('resourceType', 'Resource')}/{resource.get('id', '?')}"


def _observation_time(obs: dict[str, Any]) -> tuple[datetime, date] | None:
    period = obs.get("effectivePeriod")
    for candidate in (
        obs.get("effectiveDateTime"),
        obs.get("effectiveInstant"),
        period.get("start") if isinstance(period, dict) else None,
        obs.get("issued"),
    ):
        if candidate is not None:
            return parse_fhir_datetime(candidate)
    return None


def _time_element(obs: dict[str, Any]) -> str:
    for key in ("effectiveDateTime", "effectiveInstant", "effectivePeriod", "issued"):
        if key in obs:
            return key
    return "effective[x]"


def _status(resource: dict[str, Any]) -> str:
    status = resource.get("status")
    return status if isinstance(status, str) else "(none)"


def _status_code(concept: Any) -> str | None:
    for _, code, _ in codings(concept):
        if code:
            return code
    return None


def _has_abatement(condition: dict[str, Any]) -> bool:
    return any(key.startswith("abatement") for key in condition)


# --- patient -----------------------------------------------------------------------------------------
def _patient_facts(patients: list[dict[str, Any]], issues: list[DataIssue]) -> tuple[date | None, str | None]:
    patient = next((p for p in patients if isinstance(p, dict) and p.get("resourceType") == "Patient"), None)
    if patient is None:
        return None, None
    reference = _reference(patient)
    bad_elements: set[str] = set()
    problem = first_problem(patient)
    if problem is not None:
        element, message = problem
        bad_elements = {part for part in ("birthDate", "gender") if part in element}
        issues.append(
            DataIssue("unusable", "patient", f"The Patient resource is not valid FHIR ({message}).", reference, element)
        )
    gender = patient.get("gender") if isinstance(patient.get("gender"), str) and "gender" not in bad_elements else None
    raw_birth = patient.get("birthDate")
    birth: date | None = None
    if raw_birth is None:
        issues.append(
            DataIssue("unusable", "patient", "No birth date is recorded.", reference, "birthDate", affects="age")
        )
    elif isinstance(raw_birth, str) and _DATE_RE.match(raw_birth) and "birthDate" not in bad_elements:
        parsed = parse_fhir_datetime(raw_birth)
        birth = parsed[1] if parsed else None
    if raw_birth is not None and birth is None:
        issues.append(
            DataIssue(
                "unusable",
                "patient",
                f"The birth date '{raw_birth}' is incomplete or invalid: the age could not be determined.",
                reference,
                "birthDate",
                affects="age",
            )
        )
    return birth, gender


# --- observation selection ---------------------------------------------------------------------------
def _classify_observations(
    observations: Iterable[dict[str, Any]], protocol: Protocol
) -> dict[str, list[dict[str, Any]]]:
    """Observations by protocol analyte key (LOINC) or local kind (crs_grade, ice_score, ...)."""
    systems = protocol.section("systems")
    tables = {systems["loinc"]: protocol.analyte_by_loinc, systems["local"]: protocol.local_observation_kinds}
    out: dict[str, list[dict[str, Any]]] = {}
    for obs in observations:  # every Observation of the record passes here: plain dict work only
        if not isinstance(obs, dict) or obs.get("resourceType") != "Observation":
            continue
        concept = obs.get("code")
        items = concept.get("coding") if isinstance(concept, dict) else None
        if not isinstance(items, list) or _status(obs) in IGNORED_STATUSES:
            continue
        for coding in items:
            if not isinstance(coding, dict):
                continue
            system, code = coding.get("system"), coding.get("code")
            table = tables.get(system) if system.__class__ is str else None
            key = table.get(code) if table is not None and code.__class__ is str else None
            if key is not None:
                out.setdefault(key, []).append(obs)
                break
    return out


def _lab_analytes(protocol: Protocol) -> list[str]:
    units = protocol.section("units")
    return [a for a in protocol.section("observations") if a in units and a not in PREGNANCY_KEYS]


# --- laboratory results ------------------------------------------------------------------------------
def _uln(obs: dict[str, Any], analyte: str, quantity: Any, protocol: Protocol) -> tuple[float | None, str]:
    value_units = quantity if isinstance(quantity, dict) else {}
    for ref in _items(obs.get("referenceRange")):
        high = ref.get("high") if isinstance(ref, dict) else None
        if not isinstance(high, dict) or high.get("value") is None:
            continue
        if not any(isinstance(high.get(k), str) for k in ("unit", "code")):
            # A range without a unit is written in the result's unit, as laboratories send it.
            high = {**high, "unit": value_units.get("unit"), "code": value_units.get("code")}
        converted = to_canonical(protocol, analyte, high)
        if converted.value is not None and converted.value > 0:
            return converted.value, "reference range"
    default = protocol.section("labs")["uln_defaults"].get(analyte)
    if default is not None:
        return float(default), "default"
    return None, "none"


def _absent_reason(obs: dict[str, Any]) -> str | None:
    reason = obs.get("dataAbsentReason")
    if reason is None:
        return None
    text = concept_text(reason) or next((c for _, c, _ in codings(reason) if c), "") or "no reason given"
    return f"no value (data absent: {text})"


def _lab_result(obs: dict[str, Any], analyte: str, when: tuple[datetime, date], protocol: Protocol) -> LabResult:
    quantity = obs.get("valueQuantity")
    converted = to_canonical(protocol, analyte, quantity)
    problem = converted.problem
    if quantity is None:
        problem = _absent_reason(obs) or ("value is not a quantity" if _has_other_value(obs) else "no value")
    status = _status(obs)
    if problem is None and status not in COUNTED_STATUSES:
        problem = f"status '{status}' (not a final result)"
    uln, uln_source = _uln(obs, analyte, quantity, protocol)
    return LabResult(
        analyte=analyte,
        observation_id=str(obs.get("id", "?")),
        effective=when[0],
        local_date=when[1],
        value=converted.value if problem is None else None,
        unit=converted.unit,
        raw_value=converted.raw_value,
        raw_unit=converted.raw_unit,
        uln=uln,
        uln_source=uln_source,  # type: ignore[arg-type]
        problem=problem,
    )


def _has_other_value(obs: dict[str, Any]) -> bool:
    return any(key.startswith("value") and key != "valueQuantity" for key in obs)


def _problem_element(result: LabResult, obs: dict[str, Any]) -> str:
    problem = result.problem or ""
    if problem.startswith("status"):
        return "status"
    if "data absent" in problem:
        return "dataAbsentReason"
    if problem.startswith("unit"):
        return "valueQuantity.code"
    if problem.startswith("reported as a limit"):
        return "valueQuantity.comparator"
    return "valueQuantity.value" if "valueQuantity" in obs else "value[x]"


def _lab_issue(result: LabResult, element: str) -> DataIssue:
    label = analyte_label(result.analyte)
    return DataIssue(
        "unusable",
        "observations",
        f"{label} result of {result.local_date.isoformat()} ({result.display}): {result.problem}; not used.",
        f"Observation/{result.observation_id}",
        element,
        affects=label,
    )


def _lab_series(
    observations: list[dict[str, Any]], analyte: str, protocol: Protocol, now: datetime, issues: list[DataIssue]
) -> tuple[LabResult, ...]:
    """Results of one analyte, newest first, read down to the newest usable, valid result up to now.

    Every rule reads the newest usable result (in a window, or whatever its date), so older results are not
    converted or validated: a year of weekly labs costs no more than a week's.
    """
    dated: list[tuple[tuple[datetime, date], str, dict[str, Any]]] = []
    for obs in observations:
        when = _observation_time(obs)
        if when is None:
            label = analyte_label(analyte)
            issues.append(
                DataIssue(
                    "unusable",
                    "observations",
                    f"{label} result without a readable date: not used.",
                    _reference(obs),
                    _time_element(obs),
                    affects=label,
                )
            )
            continue
        dated.append((when, str(obs.get("id", "?")), obs))
    dated.sort(key=lambda item: (item[0][0], item[1]), reverse=True)
    results: list[LabResult] = []
    read = reported = 0
    for when, _, obs in dated:
        result = _lab_result(obs, analyte, when, protocol)
        if result.effective <= now:
            if read >= READ_DEPTH:
                break
            read += 1
            element = _problem_element(result, obs)
            if result.problem is None:
                invalid = first_problem(obs)
                if invalid is not None:
                    element, message = invalid
                    result = replace(result, value=None, problem=f"invalid FHIR Observation ({element}: {message})")
            if result.problem is None:
                results.append(result)
                break  # the newest usable result: older ones are never read
            if reported < ISSUE_DEPTH:
                reported += 1
                issues.append(_lab_issue(result, element))
        results.append(result)
    return tuple(results)


# --- toxicity ----------------------------------------------------------------------------------------
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


_KIND_OF_LOCAL = {"crs_grade": "crs", "icans_grade": "icans", "neurotox_grade": "neurotox", "ice_score": "icans"}
_KIND_LABEL = {"crs": "CRS grade", "icans": "ICANS grade", "neurotox": "neurologic toxicity grade"}


def _grade_point(
    obs: dict[str, Any], local_kind: str, protocol: Protocol, issues: list[DataIssue]
) -> GradePoint | None:
    kind = _KIND_OF_LOCAL[local_kind]
    label = "ICE score" if local_kind == "ice_score" else _KIND_LABEL[kind]
    reference = _reference(obs)
    status = _status(obs)
    if status not in COUNTED_STATUSES:
        issues.append(
            DataIssue(
                "unusable", "observations", f"{label} with status '{status}': not used.", reference, "status", label
            )
        )
        return None
    when = _observation_time(obs)
    if when is None:
        issues.append(
            DataIssue(
                "unusable",
                "observations",
                f"{label} without a readable date: not used.",
                reference,
                _time_element(obs),
                label,
            )
        )
        return None
    value = _integer_value(obs)
    toxicity = protocol.section("toxicity")
    if local_kind == "ice_score":
        low, high = int(toxicity["ice_score_min"]), int(toxicity["ice_score_max"])
        grade = ice_to_grade(value, protocol) if value is not None and low <= value <= high else None
    else:
        low, high = 0, int(protocol.section("toxicity")["recorded_grade_max"])
        grade = value if value is not None and low <= value <= high else None
    if grade is None:
        quantity = obs.get("valueQuantity")
        raw = obs.get("valueInteger", quantity.get("value") if isinstance(quantity, dict) else None)
        shown = "no value" if raw is None else f"value {raw}"
        issues.append(
            DataIssue(
                "unusable",
                "observations",
                f"{label} of {when[1].isoformat()} has {shown}, outside {low}-{high}: invalid, not used.",
                reference,
                "valueInteger",
                label,
            )
        )
        return None
    problem = first_problem(obs)
    if problem is not None:
        element, message = problem
        issues.append(
            DataIssue(
                "unusable",
                "observations",
                f"{label} is not valid FHIR ({message}): not used.",
                reference,
                element,
                label,
            )
        )
        return None
    source = "ice-score" if local_kind == "ice_score" else "grade-observation"
    ice = value if local_kind == "ice_score" else None
    return GradePoint(kind=kind, grade=grade, at=when[0], reference=reference, source=source, ice_score=ice)  # type: ignore[arg-type]


def _observation_points(
    grouped: dict[str, list[dict[str, Any]]], protocol: Protocol, issues: list[DataIssue]
) -> list[GradePoint]:
    points: list[GradePoint] = []
    for local_kind in ("crs_grade", "icans_grade", "neurotox_grade", "ice_score"):
        for obs in grouped.get(local_kind, ()):
            point = _grade_point(obs, local_kind, protocol, issues)
            if point is not None:
                points.append(point)
    graded_icans_times = {p.at for p in points if p.kind == "icans" and p.source == "grade-observation"}
    return [p for p in points if not (p.source == "ice-score" and p.at in graded_icans_times)]


def episodes_from_series(points: list[GradePoint]) -> list[ToxicityEpisode]:
    """Episodes of one observation series (one kind): separated by a recorded grade 0.

    Points at the same time collapse to the highest grade. `improved_at` is the first lower grade after the
    last time the peak was recorded; a grade-0 point resolves the episode.
    """
    by_time: dict[datetime, GradePoint] = {}
    for point in points:
        kept = by_time.get(point.at)
        if kept is None or point.grade > kept.grade:
            by_time[point.at] = point
    episodes: list[ToxicityEpisode] = []
    current: dict[str, Any] | None = None
    for at in sorted(by_time):
        point = by_time[at]
        if point.grade == 0:
            if current is not None:
                current["refs"].append(point.reference)
                episodes.append(_close(current, resolved_at=at))
                current = None
            continue
        if current is None:
            current = {"kind": point.kind, "onset": at, "peak": point.grade, "improved": None, "refs": []}
        elif point.grade >= current["peak"]:
            current["peak"] = point.grade
            current["improved"] = None
        elif current["improved"] is None:
            current["improved"] = at
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
    )


def episode_end(episode: ToxicityEpisode) -> datetime:
    """The last instant an episode is known to cover (open-ended while active)."""
    if episode.active:
        return _MAX_TIME
    return episode.resolved_at or episode.improved_at or episode.onset


def merge_episodes(members: list[ToxicityEpisode]) -> ToxicityEpisode:
    """One episode from overlapping records of it; a graded record supersedes an 'unspecified' one."""
    graded = [m for m in members if not m.unspecified]
    peak_pool = graded or members
    grade = max(m.grade for m in peak_pool)
    peak_members = [m for m in peak_pool if m.grade == grade]
    active = any(m.active for m in members)
    improvements = [m.improved_at for m in peak_members if m.improved_at is not None]
    resolutions = [m.resolved_at for m in members if m.resolved_at is not None]
    kinds = [m.kind for m in peak_members]
    references: list[str] = []
    for m in members:
        references.extend(r for r in m.references if r not in references)
    return ToxicityEpisode(
        kind="icans" if "icans" in kinds else kinds[0],
        grade=grade,
        onset=min(m.onset for m in members),
        active=active,
        improved_at=min(improvements) if improvements else None,
        resolved_at=None if active or not resolutions else max(resolutions),
        unspecified=not graded,
        references=tuple(references),
    )


def merge_overlapping(episodes: Iterable[ToxicityEpisode]) -> list[ToxicityEpisode]:
    """Episodes whose time spans overlap merged into one (oldest first)."""
    ordered = sorted(episodes, key=lambda e: (e.onset, e.references))
    out: list[ToxicityEpisode] = []
    group: list[ToxicityEpisode] = []
    group_end: datetime | None = None
    for episode in ordered:
        if group and group_end is not None and episode.onset <= group_end:
            group.append(episode)
            group_end = max(group_end, episode_end(episode))
            continue
        if group:
            out.append(group[0] if len(group) == 1 else merge_episodes(group))
        group = [episode]
        group_end = episode_end(episode)
    if group:
        out.append(group[0] if len(group) == 1 else merge_episodes(group))
    return out


# --- conditions --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _ConditionView:
    resource: dict[str, Any]
    reference: str
    system: str
    code: str
    display: str
    active: bool
    onset: datetime | None
    resolved_at: datetime | None


def _condition_views(conditions: Iterable[dict[str, Any]], protocol: Protocol) -> list[_ConditionView]:
    active_codes = set(protocol.section("toxicity")["active_clinical_status"])
    out: list[_ConditionView] = []
    for cond in conditions:
        if not isinstance(cond, dict) or cond.get("resourceType") != "Condition":
            continue
        if _status_code(cond.get("verificationStatus")) in IGNORED_VERIFICATION:
            continue
        status = _status_code(cond.get("clinicalStatus"))
        active = (status is None or status in active_codes) and not _has_abatement(cond)
        onset = _condition_onset(cond)
        period = cond.get("abatementPeriod")
        abatement = parse_fhir_datetime(cond.get("abatementDateTime")) or (
            parse_fhir_datetime(period.get("end") or period.get("start")) if isinstance(period, dict) else None
        )
        text = concept_text(cond.get("code"))
        for system, code, display in codings(cond.get("code")):
            out.append(
                _ConditionView(
                    resource=cond,
                    reference=_reference(cond),
                    system=system,
                    code=code,
                    display=_display(cond.get("code"), display or text or code),
                    active=active,
                    onset=onset,
                    resolved_at=abatement[0] if abatement else None,
                )
            )
    return out


def _display(concept: Any, fallback: str) -> str:
    text = concept.get("text") if isinstance(concept, dict) else None
    return text if isinstance(text, str) and text.strip() else fallback


def _condition_onset(cond: dict[str, Any]) -> datetime | None:
    period = cond.get("onsetPeriod")
    for candidate in (
        cond.get("onsetDateTime"),
        period.get("start") if isinstance(period, dict) else None,
        cond.get("recordedDate"),
    ):
        parsed = parse_fhir_datetime(candidate)
        if parsed is not None:
            return parsed[0]
    return None


def _valid_condition(view: _ConditionView, issues: list[DataIssue], affects: str, checked: dict[str, bool]) -> bool:
    if view.reference not in checked:
        problem = first_problem(view.resource)
        checked[view.reference] = problem is None
        if problem is not None:
            element, message = problem
            issues.append(
                DataIssue(
                    "unusable",
                    "conditions",
                    f"{affects} Condition ({view.display}) is not valid FHIR ({message}): not used.",
                    view.reference,
                    element,
                    affects,
                )
            )
    return checked[view.reference]


def _is_toxicity_code(view: _ConditionView, protocol: Protocol) -> bool:
    conditions = protocol.section("conditions")
    return view.system == protocol.section("systems")["icd10cm"] and (
        view.code in conditions["crs_icd10cm"] or view.code in conditions["icans_icd10cm"]
    )


def _toxicity_condition(
    view: _ConditionView, protocol: Protocol, now: datetime, issues: list[DataIssue]
) -> tuple[ToxicityEpisode, GradePoint] | None:
    systems = protocol.section("systems")
    if view.system != systems["icd10cm"]:
        return None
    conditions = protocol.section("conditions")
    toxicity = protocol.section("toxicity")
    for kind, table, unspecified_key in (
        ("crs", "crs_icd10cm", "unspecified_crs_grade"),
        ("icans", "icans_icd10cm", "unspecified_icans_grade"),
    ):
        if view.code not in conditions[table]:
            continue
        coded = conditions[table][view.code]
        unspecified = coded is None
        grade = int(toxicity[unspecified_key]) if unspecified else int(coded)
        onset = view.onset
        if onset is None:
            onset = now
            issues.append(
                DataIssue(
                    "unusable",
                    "conditions",
                    f"{view.display} has no onset or recorded date: its timing could not be checked.",
                    view.reference,
                    "onset[x]",
                    "CRS" if kind == "crs" else "ICANS",
                )
            )
        episode = ToxicityEpisode(
            kind=kind,  # type: ignore[arg-type]
            grade=grade,
            onset=onset,
            active=view.active,
            improved_at=view.resolved_at,
            resolved_at=view.resolved_at,
            unspecified=unspecified,
            references=(view.reference,),
        )
        point = GradePoint(
            kind=kind,  # type: ignore[arg-type]
            grade=grade,
            at=onset,
            reference=view.reference,
            source="condition",
            unspecified=unspecified,
        )
        return episode, point
    return None


def _icd_key(code: str) -> tuple[str, int] | None:
    match = re.match(r"^([A-Z])(\d{2})", code.upper())
    return (match.group(1), int(match.group(2))) if match else None


def _is_infection(view: _ConditionView, protocol: Protocol) -> bool:
    systems = protocol.section("systems")
    conditions = protocol.section("conditions")
    if view.system == systems["snomed"]:
        return view.code in {str(c) for c in conditions["infection_snomed"]}
    if view.system != systems["icd10cm"]:
        return False
    if any(view.code.upper().startswith(str(p).upper()) for p in conditions["infection_icd10cm_prefixes"]):
        return True
    key = _icd_key(view.code)
    if key is None:
        return False
    for low, high in conditions["infection_icd10cm_ranges"]:
        low_key, high_key = _icd_key(str(low)), _icd_key(str(high))
        if low_key is not None and high_key is not None and low_key <= key <= high_key:
            return True
    return False


def _is_sclc(view: _ConditionView, protocol: Protocol) -> bool:
    systems = protocol.section("systems")
    conditions = protocol.section("conditions")
    if view.system == systems["snomed"]:
        return view.code in {str(c) for c in conditions["sclc_snomed"]}
    if view.system == systems["icd10cm"] and any(
        view.code.upper().startswith(str(p).upper()) for p in conditions["sclc_icd10cm_prefixes"]
    ):
        text = concept_text(view.resource.get("code"))
        if any(str(t).lower() in text for t in conditions.get("sclc_text_exclude", ())):
            return False  # "non-small cell", "NSCLC": contain the words but are not small cell lung cancer
        return any(str(t).lower() in text for t in conditions["sclc_text"])
    return False


def _coded(view: _ConditionView) -> CodedCondition:
    return CodedCondition(
        reference=view.reference, display=view.display, code=view.code, system=view.system, onset=view.onset
    )


def _unique(items: Iterable[CodedCondition]) -> tuple[CodedCondition, ...]:
    seen: set[str] = set()
    out = []
    for item in items:
        if item.reference not in seen:
            seen.add(item.reference)
            out.append(item)
    return tuple(out)


# --- pregnancy and breastfeeding ---------------------------------------------------------------------
def _codes_of(*concepts: Any) -> set[str]:
    return {code for concept in concepts for _, code, _ in codings(concept) if code}


def _hcg_reading(obs: dict[str, Any], protocol: Protocol) -> bool | None:
    """True (positive) / False (negative) / None (cannot tell) for a qualitative hCG Observation."""
    answers = protocol.section("answers")
    positive_codes, negative_codes = set(answers["hcg_positive_codes"]), set(answers["hcg_negative_codes"])
    value_codes = _codes_of(obs.get("valueCodeableConcept"))
    interpretation_codes = _codes_of(*_items(obs.get("interpretation")))
    readings: set[bool] = set()
    for codes in (value_codes, interpretation_codes):
        if codes & positive_codes:
            readings.add(True)
        if codes & negative_codes:
            readings.add(False)
    if not readings:
        text = " ".join(
            t
            for t in (
                obs.get("valueString") if isinstance(obs.get("valueString"), str) else "",
                concept_text(obs.get("valueCodeableConcept")),
            )
            if t
        ).lower()
        # Negative phrases first: "not detected" and "non-reactive" contain the positive words.
        if any(str(t).lower() in text for t in answers["hcg_negative_text"]):
            readings.add(False)
        elif any(str(t).lower() in text for t in answers["hcg_positive_text"]):
            readings.add(True)
    return readings.pop() if len(readings) == 1 else None


def _pregnancy_from_observation(
    key: str, obs: dict[str, Any], when: tuple[datetime, date], protocol: Protocol
) -> PregnancyEvidence | str:
    """Evidence, or the reason the observation could not be read."""
    answers = protocol.section("answers")
    reference = _reference(obs)
    if key == "pregnancy_status":
        codes = _codes_of(obs.get("valueCodeableConcept"))
        if codes & set(answers["pregnant_snomed"]):
            return PregnancyEvidence("pregnant", when[0], reference, "pregnancy status: pregnant")
        if codes & set(answers["not_pregnant_snomed"]):
            return PregnancyEvidence("not-pregnant", when[0], reference, "pregnancy status: not pregnant")
        return "pregnancy status answer not recognised"
    if key == "hcg_qualitative":
        reading = _hcg_reading(obs, protocol)
        if reading is None:
            return "hCG result neither clearly positive nor negative"
        word = "positive" if reading else "negative"
        return PregnancyEvidence("pregnant" if reading else "not-pregnant", when[0], reference, f"hCG {word}")
    converted = to_canonical(protocol, "hcg_quantitative", obs.get("valueQuantity"))
    if converted.value is None:
        return f"beta-hCG {converted.problem}"
    positive = converted.value >= float(protocol.section("populations")["hcg_positive_at_least"])
    unit = canonical_unit(protocol, "hcg_quantitative")
    return PregnancyEvidence(
        "pregnant" if positive else "not-pregnant",
        when[0],
        reference,
        f"beta-hCG {converted.raw_value} {converted.raw_unit or unit}",
    )


def _pregnancy_evidence(
    grouped: dict[str, list[dict[str, Any]]],
    views: list[_ConditionView],
    protocol: Protocol,
    now: datetime,
    issues: list[DataIssue],
) -> tuple[PregnancyEvidence, ...]:
    """Pregnancy evidence, newest first. The newest readings are validated down to the first valid one."""
    lookback = int(protocol.section("populations")["pregnancy_positive_lookback_days"])
    readings: list[tuple[PregnancyEvidence, dict[str, Any]]] = []
    unreadable: list[tuple[str, dict[str, Any]]] = []
    for key in PREGNANCY_KEYS:
        for obs in grouped.get(key, ()):
            when = _observation_time(obs)
            if when is None:
                unreadable.append(("no readable date", obs))
                continue
            if (now - when[0]).days > lookback:
                continue  # too old to say anything about a current pregnancy
            if _status(obs) not in COUNTED_STATUSES:
                unreadable.append((f"status '{_status(obs)}' (not a final result)", obs))
                continue
            reading = _pregnancy_from_observation(key, obs, when, protocol)
            if isinstance(reading, str):
                unreadable.append((reading, obs))
            else:
                readings.append((reading, obs))
    readings.sort(key=lambda pair: (pair[0].at, pair[0].reference), reverse=True)
    evidence: list[PregnancyEvidence] = []
    settled = False
    for reading, obs in readings:
        if not settled and reading.at <= now:
            problem = first_problem(obs)
            if problem is not None:
                unreadable.append((f"not valid FHIR ({problem[0]}: {problem[1]})", obs))
                continue
            settled = True
        evidence.append(reading)
    for reason, obs in unreadable[:ISSUE_DEPTH]:
        issues.append(
            DataIssue(
                "unusable",
                "observations",
                f"Pregnancy observation could not be read: {reason}.",
                _reference(obs),
                affects="pregnancy status",
            )
        )
    pregnancy_codes = {str(c) for c in protocol.section("conditions")["pregnancy_snomed"]}
    snomed = protocol.section("systems")["snomed"]
    for view in views:
        if view.system != snomed or view.code not in pregnancy_codes:
            continue
        if view.active:  # an active pregnancy without a date is taken as current
            onset = view.onset or now
            evidence.append(PregnancyEvidence("pregnant", onset, view.reference, f"condition: {view.display}"))
        elif view.resolved_at is not None:
            evidence.append(
                PregnancyEvidence("not-pregnant", view.resolved_at, view.reference, f"condition ended: {view.display}")
            )
    evidence.sort(key=lambda e: (e.at, e.reference), reverse=True)
    return tuple(evidence)


def _breastfeeding(
    observations: list[dict[str, Any]], protocol: Protocol, issues: list[DataIssue]
) -> tuple[tuple[bool, datetime, str], ...]:
    answers = set(protocol.section("answers")["breastfeeding_loinc_answers"])
    out: list[tuple[bool, datetime, str]] = []
    for obs in observations:
        when = _observation_time(obs)
        reference = _reference(obs)
        if _status(obs) not in COUNTED_STATUSES or when is None or "valueCodeableConcept" not in obs:
            issues.append(
                DataIssue(
                    "unusable",
                    "observations",
                    "Breastfeeding status could not be read (status, date or answer missing).",
                    reference,
                    affects="breastfeeding",
                )
            )
            continue
        codes = _codes_of(obs.get("valueCodeableConcept"))
        if not codes:
            # An answer without a code (free text only) cannot be read: never taken as "not breastfeeding".
            issues.append(
                DataIssue(
                    "unusable",
                    "observations",
                    "Breastfeeding status could not be read: the answer "
                    f"'{concept_text(obs.get('valueCodeableConcept')) or 'no text'}' has no code.",
                    reference,
                    "valueCodeableConcept",
                    affects="breastfeeding",
                )
            )
            continue
        out.append((bool(codes & answers), when[0], reference))
    out.sort(key=lambda item: (item[1], item[2]), reverse=True)
    return tuple(out)


# --- entry point ------------------------------------------------------------------------------------
def build_clinical_facts(
    resources: dict[str, list[dict[str, Any]]], protocol: Protocol, now: datetime
) -> ClinicalFacts:
    issues: list[DataIssue] = []
    birth_date, gender = _patient_facts(resources.get("patient") or [], issues)
    grouped = _classify_observations(resources.get("observations") or (), protocol)

    labs = {
        analyte: _lab_series(grouped.get(analyte, []), analyte, protocol, now, issues)
        for analyte in _lab_analytes(protocol)
    }

    points = _observation_points(grouped, protocol, issues)
    episodes: list[ToxicityEpisode] = []
    for kind in ("crs", "icans", "neurotox"):
        episodes.extend(episodes_from_series([p for p in points if p.kind == kind]))

    views = _condition_views(resources.get("conditions") or (), protocol)
    checked: dict[str, bool] = {}
    sclc: list[CodedCondition] = []
    infections: list[CodedCondition] = []
    for view in views:
        if _is_toxicity_code(view, protocol):
            toxicity = (
                _toxicity_condition(view, protocol, now, issues)
                if _valid_condition(view, issues, "Toxicity", checked)
                else None
            )
            if toxicity is not None:
                episodes.append(toxicity[0])
                points.append(toxicity[1])
        elif _is_sclc(view, protocol):
            if _valid_condition(view, issues, "Diagnosis", checked):
                sclc.append(_coded(view))
        elif view.active and _is_infection(view, protocol) and _valid_condition(view, issues, "Infection", checked):
            infections.append(_coded(view))

    merged: list[ToxicityEpisode] = []
    for kind in ("crs", "icans", "neurotox"):
        merged.extend(merge_overlapping(e for e in episodes if e.kind == kind))
    merged.sort(key=lambda e: (e.onset, e.kind))
    points.sort(key=lambda p: (p.at, p.kind, p.reference))

    return ClinicalFacts(
        birth_date=birth_date,
        gender=gender,
        labs=labs,
        toxicity_points=tuple(points),
        episodes=tuple(merged),
        pregnancy=_pregnancy_evidence(grouped, views, protocol, now, issues),
        breastfeeding=_breastfeeding(grouped.get(BREASTFEEDING_KEY, []), protocol, issues),
        sclc_diagnoses=_unique(sclc),
        active_infections=_unique(infections),
        issues=tuple(issues),
    )
