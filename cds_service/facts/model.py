"""Typed, unit-normalised facts about a patient: what the rules read. No FHIR JSON beyond this line.

Built by `facts.build.build_facts` from the gathered FHIR resources (read through `cds_service.reading`).
Values that could not be interpreted
are kept with a `problem` (never dropped, never read as normal).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import cached_property
from typing import Any, Literal

from ..reading.quantities import clean_near, decides_above, decides_below
from ..value_types import quick_init

ToxicityKind = Literal["crs", "icans", "neurotox"]


@quick_init
@dataclass(frozen=True, slots=True)
class DataIssue:
    """Data the service could not obtain or interpret; becomes a `data-quality` card."""

    kind: Literal["unavailable", "unusable"]
    dataset: str  # prefetch key: patient, medications, administrations, observations, conditions, draftOrders
    message: str  # what is wrong, for the card (may name values; never logged)
    reference: str | None = None  # "Observation/obs-1"
    element: str | None = None  # "valueQuantity.code"
    affects: str | None = None  # which check could not run, e.g. "ANC", "schedule position"
    # "critical" for an unreadable element of a draft tarlatamab order the checks need (the dose, ...)
    severity: Literal["critical", "warning"] = "warning"


@quick_init
@dataclass(frozen=True, slots=True)
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


@quick_init
@dataclass(frozen=True, slots=True)
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


@quick_init
@dataclass(frozen=True, slots=True)
class Administration:
    """A tarlatamab dose given: the records of one local date (split or interrupted infusions) taken as one.

    `start` sorts doses and compares them with the evaluation time; `instant` is set only when the record
    carries a time and an offset (used to order events, spec section 12).
    """

    resource_id: str
    status: str
    start: datetime
    local_date: date  # calendar date as written in the resource
    dose: Dose
    instant: datetime | None = None
    records: tuple[str, ...] = ()  # every MedicationAdministration id of this local date
    dose_source: Literal["dosage", "product", "none"] = "dosage"
    position: SchedulePosition | None = None  # filled in by the schedule reconstruction
    restart_reason: str | None = None  # "delay" or "crs-grade3" when this dose is R1
    # A dose drafted earlier in the same request (orders signed together), taken as given when judging
    # the later orders; `resource_id` is then the draft MedicationRequest's id.
    planned_in_request: bool = False

    @property
    def reference(self) -> str:
        if self.planned_in_request:
            return f"MedicationRequest/{self.resource_id}"
        ids = self.records or (self.resource_id,)
        return ", ".join(f"MedicationAdministration/{i}" for i in ids)


@dataclass(frozen=True, slots=True)
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
    product_mg: float | None = None  # strength of the kit named on the order (1 mg or 10 mg kit), if any
    resource: dict[str, object] = field(default_factory=dict, compare=False, repr=False)  # for suggestions


@dataclass(frozen=True, slots=True)
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
    route: str | None = None  # the route as written; None when no route is stated
    route_iv: bool | None = None  # None: no route stated (accepted, spec 13.17)
    strength_display: str | None = None  # sodium chloride concentration as written ("3%"), when not 0.9%
    authored_on: date | None = None  # local date of authoredOn (covers a dose without timing, 13.1)


@quick_init
@dataclass(frozen=True, slots=True)
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
    comparator: str | None = None  # "<", "<=", ">", ">=": `value` is a bound
    preliminary: bool = False  # may raise a finding, never satisfies a required lab or clears a hold
    exact: bool = False  # `effective` carries a time and an offset (an instant)

    @property
    def usable(self) -> bool:
        return self.value is not None and self.problem is None

    @property
    def final(self) -> bool:
        """A usable result that may satisfy a requirement and clear a hold."""
        return self.usable and not self.preliminary

    @property
    def display(self) -> str:
        if self.raw_value is None:
            return "no value"
        return f"{self.comparator or ''}{self.raw_value} {self.raw_unit or '(no unit)'}"

    def below(self, threshold: float) -> bool | None:
        """Whether the result is below `threshold` (canonical unit); None when unusable or undecided."""
        if not self.usable or self.value is None:
            return None
        return decides_below(self.value, self.comparator, threshold)

    def above(self, threshold: float) -> bool | None:
        if not self.usable or self.value is None:
            return None
        return decides_above(self.value, self.comparator, threshold)

    def above_uln(self, multiple: float) -> bool | None:
        """Whether the result is above `multiple` x ULN; None when unusable, without ULN, or undecided."""
        value, uln = self.value, self.uln
        if value is None or self.problem is not None or not uln:  # not usable, or no ULN
            return None
        return decides_above(clean_near(value / uln, multiple), self.comparator, multiple)


@quick_init
@dataclass(frozen=True, slots=True)
class GradePoint:
    """One recorded grade of a toxicity: a Condition, a grade Observation, or an ICE score."""

    kind: ToxicityKind
    grade: int  # 0 = resolved / none
    at: datetime
    reference: str
    source: Literal["condition", "grade-observation", "ice-score"]
    ice_score: int | None = None
    unspecified: bool = False  # coded grade unspecified; grade holds the protocol's assumed grade
    preliminary: bool = False
    local_date: date | None = None
    exact: bool = False  # `at` carries a time and an offset


@dataclass(frozen=True, slots=True)
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
    onset_date: date | None = None  # local date as written (None: from `onset`)
    onset_exact: bool = False  # `onset` carries a time and an offset
    # "recorded": grade observations; "condition": a coded Condition; "ice": known only from ICE scores
    # (resolves at a later ICE 10, section 13.3)
    series: Literal["recorded", "condition", "ice"] = "recorded"
    preliminary: bool = False  # known only from preliminary records

    @property
    def onset_local(self) -> date:
        return self.onset_date or self.onset.date()


@dataclass(frozen=True, slots=True)
class PregnancyEvidence:
    status: Literal["pregnant", "not-pregnant"]
    at: datetime
    reference: str
    description: str  # e.g. "hCG (urine) negative", "pregnancy status: not pregnant"
    source: Literal["test", "condition"] = "test"
    preliminary: bool = False


@dataclass(frozen=True, slots=True)
class CodedCondition:
    reference: str
    display: str
    code: str
    system: str
    onset: datetime | None = None


@dataclass(frozen=True)  # not slotted: `derived` is a cached_property (one per request: no gain)
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
    today: date | None = None  # the evaluation time's local date in the site time zone

    @cached_property
    def derived(self) -> dict[Hashable, Any]:
        """What the rules derive from these facts and several rules read (e.g. the expected dose of a date):
        computed once per facts object, so per request; a `replace`d copy starts empty."""
        return {}

    def age_on(self, day: date) -> int | None:
        if self.birth_date is None:
            return None
        years = day.year - self.birth_date.year
        if (day.month, day.day) < (self.birth_date.month, self.birth_date.day):
            years -= 1
        return years
