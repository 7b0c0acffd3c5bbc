"""Patient, diagnoses, infections, pregnancy and breastfeeding (clinical specification sections 1, 9, 10, 12).

Conditions are read through `reading.conditions` (verification and clinical status policy); pregnancy and
breastfeeding observations through `reading.observations` (a preliminary result may show a pregnancy, never
rule one out).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import date, datetime
from typing import Any

from ..fhir_validation import first_problem
from ..protocol import Protocol
from ..reading import conditions as cond_reading
from ..reading import observations as obs_reading
from ..reading.codes import codings, concept_text
from ..reading.dates import When, event_sort_key, read_when
from ..reading.identity import reference_of
from ..reading.quantities import as_written, decides_below
from ..units import canonical_unit
from .labs import PREGNANCY_KEYS, convert_lab, future_issue
from .model import CodedCondition, DataIssue, GradePoint, PregnancyEvidence, ToxicityEpisode
from .toxicity import condition_episode

BREASTFEEDING_KEY = "breastfeeding"
ISSUE_DEPTH = 3
PATIENT_READ_ELEMENTS = frozenset({"resourceType", "id", "birthDate", "gender"})
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _items(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


FHIR_GENDERS = frozenset({"male", "female", "other", "unknown"})


def patient_facts(
    patients: list[dict[str, Any]], issues: list[DataIssue], today: date | None = None
) -> tuple[date | None, str | None]:
    """(birth date, gender): None for what cannot be read, reported. A gender that is not a FHIR code ("F") is
    read as absent, so checks that apply to female or unknown patients still apply; a birth date after `today`
    gives no age."""
    patient = next((p for p in patients if isinstance(p, dict) and p.get("resourceType") == "Patient"), None)
    if patient is None:
        return None, None
    reference = reference_of(patient)
    bad_elements: set[str] = set()
    problem = first_problem(patient, PATIENT_READ_ELEMENTS)
    if problem is not None:
        element, message = problem
        bad_elements = {part for part in ("birthDate", "gender") if part in element}
        issues.append(
            DataIssue("unusable", "patient", f"The Patient resource is not valid FHIR ({message}).", reference, element)
        )
    gender = patient.get("gender") if isinstance(patient.get("gender"), str) and "gender" not in bad_elements else None
    if gender is not None and gender not in FHIR_GENDERS:
        issues.append(
            DataIssue(
                "unusable",
                "patient",
                f"The gender '{gender}' is not a FHIR gender code: read as unknown.",
                reference,
                "gender",
                affects="gender",
            )
        )
        gender = None
    raw_birth = patient.get("birthDate")
    birth: date | None = None
    if raw_birth is None:
        issues.append(
            DataIssue("unusable", "patient", "No birth date is recorded.", reference, "birthDate", affects="age")
        )
    elif isinstance(raw_birth, str) and _DATE_RE.match(raw_birth) and "birthDate" not in bad_elements:
        parsed = read_when(raw_birth)
        birth = parsed.local_date if parsed else None
        if birth is not None and today is not None and birth > today:
            birth = None
    if raw_birth is not None and birth is None:
        issues.append(
            DataIssue(
                "unusable",
                "patient",
                f"The birth date '{as_written(raw_birth)}' is incomplete or invalid: the age could not be determined.",
                reference,
                "birthDate",
                affects="age",
            )
        )
    return birth, gender


# --- conditions --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ConditionView:
    resource: dict[str, Any]
    reference: str
    system: str
    code: str
    display: str
    active: bool
    onset: When | None
    resolved: When | None
    status_readable: bool = True

    @property
    def onset_at(self) -> datetime | None:
        return self.onset.moment if self.onset is not None else None


def condition_views(conditions: Iterable[dict[str, Any]], protocol: Protocol) -> list[ConditionView]:
    active_codes = set(protocol.section("toxicity")["active_clinical_status"])
    out: list[ConditionView] = []
    for cond in conditions:
        if not isinstance(cond, dict) or cond.get("resourceType") != "Condition":
            continue
        if cond_reading.ignored(cond):
            continue
        status = cond_reading.condition_status(cond, active_codes)
        text = concept_text(cond.get("code"))
        for system, code, display in codings(cond.get("code")):
            out.append(
                ConditionView(
                    resource=cond,
                    reference=reference_of(cond),
                    system=system,
                    code=code,
                    display=_display(cond.get("code"), display or text or code),
                    active=status.active,
                    onset=status.onset,
                    resolved=status.resolved,
                    status_readable=status.status_readable,
                )
            )
    return out


def _display(concept: Any, fallback: str) -> str:
    text = concept.get("text") if isinstance(concept, dict) else None
    return text if isinstance(text, str) and text.strip() else fallback

def status_issue(view: ConditionView, affects: str) -> DataIssue:
    """The warning for a Condition whose clinicalStatus holds no FHIR clinical status code."""
    taken = "active" if view.active else "ended (abatement recorded)"
    return DataIssue(
        "unusable",
        "conditions",
        f"clinical status of {affects.lower()} Condition ({view.display}) is not a FHIR code: taken as {taken}.",
        view.reference,
        "clinicalStatus",
        affects,
    )


def valid_condition(view: ConditionView, issues: list[DataIssue], affects: str, checked: dict[str, bool]) -> bool:
    """Whether a Condition a check uses can be read (its problem reported once if not; an unreadable clinical
    status is reported too, the condition is still used)."""
    if view.reference not in checked:
        problem = first_problem(view.resource, cond_reading.READ_ELEMENTS)
        checked[view.reference] = problem is None
        if problem is None and not view.status_readable:
            issues.append(status_issue(view, affects))
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


def is_toxicity_code(view: ConditionView, protocol: Protocol) -> bool:
    conditions = protocol.section("conditions")
    return view.system == protocol.section("systems")["icd10cm"] and (
        view.code in conditions["crs_icd10cm"] or view.code in conditions["icans_icd10cm"]
    )


def toxicity_condition(
    view: ConditionView, protocol: Protocol, now: datetime, issues: list[DataIssue]
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
            onset = When(now.date(), now)
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
        return condition_episode(kind, grade, unspecified, view.reference, view.active, onset, view.resolved)
    return None


_ICD_CATEGORY = re.compile(r"^([A-Z])(\d{2})")


def _icd_key(code: str) -> tuple[str, int] | None:
    match = _ICD_CATEGORY.match(code.upper())
    return (match.group(1), int(match.group(2))) if match else None


def is_infection(view: ConditionView, protocol: Protocol) -> bool:
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


def is_sclc(view: ConditionView, protocol: Protocol) -> bool:
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


def coded(view: ConditionView) -> CodedCondition:
    return CodedCondition(
        reference=view.reference, display=view.display, code=view.code, system=view.system, onset=view.onset_at
    )


def unique(items: Iterable[CodedCondition]) -> tuple[CodedCondition, ...]:
    seen: set[str] = set()
    out = []
    for item in items:
        if item.reference not in seen:
            seen.add(item.reference)
            out.append(item)
    return tuple(out)


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
    key: str, obs: dict[str, Any], when: When, protocol: Protocol
) -> PregnancyEvidence | str:
    """Evidence, or the reason the observation could not be read."""
    answers = protocol.section("answers")
    reference = reference_of(obs)
    if key == "pregnancy_status":
        codes = _codes_of(obs.get("valueCodeableConcept"))
        if codes & set(answers["pregnant_snomed"]):
            return PregnancyEvidence("pregnant", when.moment, reference, "pregnancy status: pregnant")
        if codes & set(answers["not_pregnant_snomed"]):
            return PregnancyEvidence("not-pregnant", when.moment, reference, "pregnancy status: not pregnant")
        return "pregnancy status answer not recognised"
    if key == "hcg_qualitative":
        reading = _hcg_reading(obs, protocol)
        if reading is None:
            return "hCG result neither clearly positive nor negative"
        word = "positive" if reading else "negative"
        return PregnancyEvidence("pregnant" if reading else "not-pregnant", when.moment, reference, f"hCG {word}")
    converted = convert_lab(protocol, "hcg_quantitative", obs.get("valueQuantity"))
    if converted.value is None:
        return f"beta-hCG {converted.problem}"
    threshold = float(protocol.section("populations")["hcg_positive_at_least"])
    negative = decides_below(converted.value, converted.comparator, threshold)
    if negative is None:
        shown = f"{converted.comparator}{converted.raw_value}"
        return f"beta-hCG reported as {shown}: cannot tell below or above {threshold:g}"
    unit = canonical_unit(protocol, "hcg_quantitative")
    return PregnancyEvidence(
        "not-pregnant" if negative else "pregnant",
        when.moment,
        reference,
        f"beta-hCG {converted.comparator or ''}{converted.raw_value} {converted.raw_unit or unit}",
    )


def pregnancy_evidence(
    grouped: dict[str, list[dict[str, Any]]],
    views: list[ConditionView],
    protocol: Protocol,
    now: datetime,
    issues: list[DataIssue],
    today: date | None = None,
) -> tuple[PregnancyEvidence, ...]:
    """Pregnancy evidence, newest first. The newest readings are validated down to the first valid one.
    `today`: the site's local date (a date-only reading is after the check only when dated after it)."""
    lookback = int(protocol.section("populations")["pregnancy_positive_lookback_days"])
    readings: list[tuple[When, PregnancyEvidence, dict[str, Any]]] = []
    unreadable: list[tuple[str, dict[str, Any]]] = []
    for key in PREGNANCY_KEYS:
        for obs in grouped.get(key, ()):
            when = obs_reading.observation_when(obs)
            if when is None:
                unreadable.append(("no readable date", obs))
                continue
            if (now - when.moment).days > lookback:
                continue  # too old to say anything about a current pregnancy
            status = obs_reading.status_class(obs)
            reading = (
                obs_reading.MALFORMED_STATUS
                if status == "malformed"
                else _pregnancy_from_observation(key, obs, when, protocol)
            )
            if isinstance(reading, str):
                unreadable.append((reading, obs))
            elif status == "preliminary":
                # A preliminary result may show a pregnancy; it never rules one out (section 12).
                if reading.status == "pregnant":
                    readings.append((when, replace(reading, preliminary=True), obs))
            else:
                readings.append((when, reading, obs))
    # Newest first, in event order (see event_sort_key).
    order = event_sort_key(when for when, _, _ in readings)
    readings.sort(key=lambda item: (order(item[0]), item[1].reference), reverse=True)
    evidence: list[tuple[When, PregnancyEvidence]] = []
    settled = False
    for when, reading, obs in readings:
        if when.after(now, today or now.date()):
            issues.append(future_issue("Pregnancy", when, reading.reference, "observations"))
        if not settled and reading.at <= now:
            problem = first_problem(obs, obs_reading.READ_ELEMENTS)
            if problem is not None:
                unreadable.append((f"not valid FHIR ({problem[0]}: {problem[1]})", obs))
                continue
            settled = True
        evidence.append((when, reading))
    for reason, obs in unreadable[:ISSUE_DEPTH]:
        issues.append(
            DataIssue(
                "unusable",
                "observations",
                f"Pregnancy observation could not be read: {reason}.",
                reference_of(obs),
                affects="pregnancy status",
            )
        )
    pregnancy_codes = {str(c) for c in protocol.section("conditions")["pregnancy_snomed"]}
    snomed = protocol.section("systems")["snomed"]
    reported: set[str] = set()
    for view in views:
        if view.system != snomed or view.code not in pregnancy_codes:
            continue
        if not view.status_readable and view.reference not in reported:
            reported.add(view.reference)
            issues.append(status_issue(view, "Pregnancy"))
        if view.active:  # an active pregnancy without a date is taken as current
            onset = view.onset or When(now.date(), now)
            evidence.append(
                (
                    onset,
                    PregnancyEvidence(
                        "pregnant", onset.moment, view.reference, f"condition: {view.display}", source="condition"
                    ),
                )
            )
        elif view.resolved is not None:
            evidence.append(
                (
                    view.resolved,
                    PregnancyEvidence(
                        "not-pregnant",
                        view.resolved.moment,
                        view.reference,
                        f"condition ended: {view.display}",
                        source="condition",
                    ),
                )
            )
    order = event_sort_key(when for when, _ in evidence)
    evidence.sort(key=lambda pair: (order(pair[0]), pair[1].reference), reverse=True)
    return tuple(e for _, e in evidence)


def breastfeeding(
    observations: list[dict[str, Any]], protocol: Protocol, issues: list[DataIssue]
) -> tuple[tuple[bool, datetime, str], ...]:
    answers = set(protocol.section("answers")["breastfeeding_loinc_answers"])
    not_answers = set(protocol.section("answers")["not_breastfeeding_loinc_answers"])
    out: list[tuple[bool, datetime, str]] = []
    for obs in observations:
        when = obs_reading.observation_when(obs)
        reference = reference_of(obs)
        if obs_reading.status_class(obs) != "final" or when is None or "valueCodeableConcept" not in obs:
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
        if not codes & (answers | not_answers):
            issues.append(
                DataIssue(
                    "unusable",
                    "observations",
                    "Breastfeeding status could not be read: its answer code is not a breastfeeding answer.",
                    reference,
                    "valueCodeableConcept",
                    affects="breastfeeding",
                )
            )
            continue
        out.append((bool(codes & answers), when.moment, reference))
    out.sort(key=lambda item: (item[1], item[2]), reverse=True)
    return tuple(out)


