"""Gathered FHIR resources -> `PatientFacts`: every facts builder, run in order.

Clinical facts (patient, labs, toxicity, pregnancy, diagnoses) come first: the schedule positions of the
administration history depend on the toxicity episodes (a Grade 3 CRS re-initiates the step-up).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, tzinfo
from typing import Any

from ..protocol import Protocol
from ..reading.dates import site_date
from ..reading.medications import MedicationIndex, build_catalog
from .history import build_administrations, first_dose_date, future_dose_issues
from .labs import build_labs, classify_observations
from .model import CodedCondition, DataIssue, GradePoint, LabResult, PatientFacts, PregnancyEvidence, ToxicityEpisode
from .orders import build_order_facts
from .populations import (
    BREASTFEEDING_KEY,
    breastfeeding,
    coded,
    condition_views,
    is_infection,
    is_sclc,
    is_toxicity_code,
    patient_facts,
    pregnancy_evidence,
    toxicity_condition,
    unique,
    valid_condition,
)
from .toxicity import build_episodes, observation_points, without_future_points


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


def build_clinical_facts(
    resources: dict[str, list[dict[str, Any]]],
    protocol: Protocol,
    now: datetime,
    treated_since: date | None = None,
    today: date | None = None,
) -> ClinicalFacts:
    """`treated_since`: the local date of the first tarlatamab dose (liver results are read back to it);
    `today`: the site's local date (default: the UTC date of `now`)."""
    today = today or now.date()
    issues: list[DataIssue] = []
    birth_date, gender = patient_facts(resources.get("patient") or [], issues, today)
    grouped = classify_observations(resources.get("observations") or (), protocol)
    labs = build_labs(grouped, protocol, now, issues, treated_since, today)
    points = without_future_points(observation_points(grouped, protocol, issues), now, today, issues)

    views = condition_views(resources.get("conditions") or (), protocol)
    checked: dict[str, bool] = {}
    sclc: list[CodedCondition] = []
    infections: list[CodedCondition] = []
    condition_episodes: list[ToxicityEpisode] = []
    for view in views:
        if is_toxicity_code(view, protocol):
            toxicity = (
                toxicity_condition(view, protocol, now, issues)
                if valid_condition(view, issues, "Toxicity", checked)
                else None
            )
            if toxicity is not None:
                condition_episodes.append(toxicity[0])
                points.append(toxicity[1])
        elif is_sclc(view, protocol):
            if valid_condition(view, issues, "Diagnosis", checked):
                sclc.append(coded(view))
        elif view.active and is_infection(view, protocol) and valid_condition(view, issues, "Infection", checked):
            infections.append(coded(view))

    episodes = build_episodes(points, condition_episodes)
    points.sort(key=lambda p: (p.at, p.kind, p.reference))
    return ClinicalFacts(
        birth_date=birth_date,
        gender=gender,
        labs=labs,
        toxicity_points=tuple(points),
        episodes=episodes,
        pregnancy=pregnancy_evidence(grouped, views, protocol, now, issues, today),
        breastfeeding=breastfeeding(grouped.get(BREASTFEEDING_KEY, []), protocol, issues),
        sclc_diagnoses=unique(sclc),
        active_infections=unique(infections),
        issues=tuple(issues),
    )


def build_facts(
    *,
    patient_id: str,
    hook: str,
    resources: dict[str, list[dict[str, Any]]],
    draft_entries: Sequence[dict[str, Any]],
    selections: Sequence[str],
    protocol: Protocol,
    now: datetime,
    issues: Sequence[Any] = (),
    unavailable: frozenset[str] = frozenset(),
    zone: tzinfo | None = None,
    medications: Sequence[dict[str, Any]] = (),
) -> PatientFacts:
    """All facts of one request. `zone`: the site time zone ("now" -> local date); `medications`: Medication
    resources of the prefetch or fetched from fhirServer (targets of `medicationReference`)."""
    today = site_date(now, zone) if zone is not None else now.date()
    catalog = build_catalog(
        [*medications, *(r for values in resources.values() for r in values if isinstance(r, dict))]
    )
    index = MedicationIndex(protocol, catalog)
    administered = [r for r in resources.get("administrations") or () if isinstance(r, dict)]
    clinical = build_clinical_facts(resources, protocol, now, first_dose_date(administered, index), today)
    administrations, history_issues = build_administrations(administered, clinical.episodes, protocol, index)
    history_issues.extend(future_dose_issues(administrations, now, today))
    orders = build_order_facts(
        resources,
        draft_entries=tuple(draft_entries),
        selections=tuple(selections),
        hook=hook,
        protocol=protocol,
        today=today,
        index=index,
    )
    return PatientFacts(
        patient_id=patient_id,
        evaluation_time=now,
        birth_date=clinical.birth_date,
        gender=clinical.gender,
        administrations=administrations,
        draft_orders=orders.draft_orders,
        companion_orders=orders.companion_orders,
        labs=clinical.labs,
        toxicity_points=clinical.toxicity_points,
        episodes=clinical.episodes,
        pregnancy=clinical.pregnancy,
        breastfeeding=clinical.breastfeeding,
        sclc_diagnoses=clinical.sclc_diagnoses,
        platinum_history=orders.platinum_history,
        active_infections=clinical.active_infections,
        issues=(*issues, *clinical.issues, *history_issues, *orders.issues),
        unavailable=unavailable,
        today=today,
    )
