"""Typed, unit-normalised facts about a patient: what the rules read. No FHIR JSON beyond this line.

Built by `patient_facts.build_facts` from the gathered FHIR resources. Values that could not be interpreted
are kept with a `problem` (never dropped, never read as normal).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Literal

ToxicityKind = Literal["crs", "icans", "neurotox"]


@dataclass(frozen=True)
class DataIssue:
    """Data the service could not obtain or interpret; becomes a `data-quality` card."""

    kind: Literal["unavailable", "unusable"]
    dataset: str  # prefetch key: patient, medications, administrations, observations, conditions, draftOrders
    message: str  # what is wrong, for the card (may name values; never logged)
    reference: str | None = None  # "Observation/obs-1"
    element: str | None = None  # "valueQuantity.code"
    affects: str | None = None  # which check could not run, e.g. "ANC", "schedule position"


@dataclass(frozen=True)
class Dose:
    """An amount of tarlatamab: `mg` is None when it could not be converted (see `problem`)."""

    mg: float | None
    raw_value: str | None = None
    raw_unit: str | None = None
    problem: str | None = None

    @property
    def display(self) -> str:
        if self.raw_value is None:
            return "no dose stated"
        return f"{self.raw_value} {self.raw_unit or '(no unit)'}".strip()


@dataclass(frozen=True)
class SchedulePosition:
    """Where a dose sits in the schedule.

    `label` is C<cycle>D<day> for the first sequence and maintenance, "R1" for a restart step-up dose;
    R2 has `restart_step` 2 and the label of the position number it takes (e.g. C4D15).
    """

    label: str
    cycle: int | None  # None for R1
    day: int | None  # None for R1
    restart_step: int | None = None  # 1 or 2 inside a restart sequence, else None

    @property
    def names(self) -> frozenset[str]:
        """The names protocol position lists may use for this dose ("C1D8", "R2", ...)."""
        out = {self.label}
        if self.restart_step:
            out.add(f"R{self.restart_step}")
        return frozenset(out)

    @property
    def display(self) -> str:
        if self.restart_step == 2:
            return f"R2 (restart, {self.label})"
        if self.restart_step == 1:
            return "R1 (restart step-up)"
        return self.label


@dataclass(frozen=True)
class Administration:
    """A tarlatamab dose given (MedicationAdministration completed / in-progress / stopped)."""

    resource_id: str
    status: str
    start: datetime
    local_date: date  # calendar date as written in the resource
    dose: Dose
    position: SchedulePosition | None = None  # filled in by the schedule reconstruction
    restart_reason: str | None = None  # "delay" or "crs-grade3" when this dose is R1
    # A dose drafted earlier in the same request (orders signed together), taken as given when judging
    # the later orders; `resource_id` is then the draft MedicationRequest's id.
    planned_in_request: bool = False

    @property
    def reference(self) -> str:
        if self.planned_in_request:
            return f"MedicationRequest/{self.resource_id}"
        return f"MedicationAdministration/{self.resource_id}"


@dataclass(frozen=True)
class DraftOrder:
    """A draft tarlatamab MedicationRequest of the request (draftOrders)."""

    resource_id: str
    status: str
    planned_date: date
    planned_source: Literal["timing.event", "timing.repeat.boundsPeriod.start", "evaluation time"]
    dose: Dose
    rate_ml_per_h: float | None = None
    rate_display: str | None = None  # the rate as written, when the unit could not be read
    duration_minutes: float | None = None
    duration_display: str | None = None
    selected: bool = True  # order-select: listed in context.selections
    resource: dict[str, object] = field(default_factory=dict, compare=False, repr=False)  # for suggestions


@dataclass(frozen=True)
class CompanionOrder:
    """A dexamethasone or sodium chloride MedicationRequest (draft in this request, or active)."""

    resource_id: str
    medication: Literal["dexamethasone", "sodium_chloride"]
    status: str
    in_request: bool  # one of this request's draftOrders
    planned_date: date | None
    dose_mg: float | None = None  # dexamethasone
    volume_ml: float | None = None  # sodium chloride
    dose_display: str | None = None


@dataclass(frozen=True)
class LabResult:
    """One laboratory Observation, converted to the analyte's canonical unit."""

    analyte: str  # anc, hemoglobin, platelets, alt, ast, bilirubin, sodium, potassium, uric_acid, egfr
    observation_id: str
    effective: datetime
    local_date: date
    value: float | None  # canonical unit; None when unusable
    unit: str  # canonical unit
    raw_value: str | None
    raw_unit: str | None
    uln: float | None = None  # canonical unit
    uln_source: Literal["reference range", "default", "none"] = "none"
    problem: str | None = None  # why the value is unusable

    @property
    def usable(self) -> bool:
        return self.value is not None and self.problem is None

    @property
    def display(self) -> str:
        if self.raw_value is None:
            return "no value"
        return f"{self.raw_value} {self.raw_unit or '(no unit)'}"


@dataclass(frozen=True)
class GradePoint:
    """One recorded grade of a toxicity: a Condition, a grade Observation, or an ICE score."""

    kind: ToxicityKind
    grade: int  # 0 = resolved / none
    at: datetime
    reference: str
    source: Literal["condition", "grade-observation", "ice-score"]
    ice_score: int | None = None
    unspecified: bool = False  # coded grade unspecified; grade holds the protocol's assumed grade


@dataclass(frozen=True)
class ToxicityEpisode:
    """A distinct episode of CRS, ICANS or other neurologic toxicity."""

    kind: ToxicityKind
    grade: int  # highest grade of the episode
    onset: datetime
    active: bool
    improved_at: datetime | None = None  # first time the grade fell below the peak
    resolved_at: datetime | None = None
    unspecified: bool = False
    references: tuple[str, ...] = ()


@dataclass(frozen=True)
class PregnancyEvidence:
    status: Literal["pregnant", "not-pregnant"]
    at: datetime
    reference: str
    description: str  # e.g. "hCG (urine) negative", "pregnancy status: not pregnant"


@dataclass(frozen=True)
class CodedCondition:
    reference: str
    display: str
    code: str
    system: str
    onset: datetime | None = None


@dataclass(frozen=True)
class PatientFacts:
    patient_id: str
    evaluation_time: datetime
    birth_date: date | None
    gender: str | None
    administrations: tuple[Administration, ...]  # given doses, oldest first, positions filled in
    draft_orders: tuple[DraftOrder, ...]  # tarlatamab drafts of this request
    companion_orders: tuple[CompanionOrder, ...]
    labs: dict[str, tuple[LabResult, ...]]  # analyte -> results, newest first (usable and unusable)
    toxicity_points: tuple[GradePoint, ...]
    episodes: tuple[ToxicityEpisode, ...]  # oldest first
    pregnancy: tuple[PregnancyEvidence, ...]  # newest first
    breastfeeding: tuple[tuple[bool, datetime, str], ...]  # (breastfeeding?, when, reference), newest first
    sclc_diagnoses: tuple[CodedCondition, ...]
    platinum_history: tuple[str, ...]  # references of platinum orders/administrations/statements
    active_infections: tuple[CodedCondition, ...]
    issues: tuple[DataIssue, ...] = ()
    unavailable: frozenset[str] = frozenset()  # datasets that could not be obtained at all

    def age_on(self, day: date) -> int | None:
        if self.birth_date is None:
            return None
        years = day.year - self.birth_date.year
        if (day.month, day.day) < (self.birth_date.month, self.birth_date.day):
            years -= 1
        return years
