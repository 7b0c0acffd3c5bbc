"""Findings: what a rule concluded, with the data it used. Cards are rendered from findings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

SuggestionKind = Literal[
    "update-dose",  # update the draft tarlatamab order to params["dose_mg"] (1 or 10 only)
    "delete-order",  # delete the draft tarlatamab order (hold or discontinuation)
    "create-dexamethasone-premed",  # dexamethasone 8 mg IV once, 60 min before the infusion
    "create-saline",  # sodium chloride 0.9% 1000 mL IV over 4-5 h after the infusion
    "create-dexamethasone-neurotox",  # dexamethasone 10 mg IV for Grade 1-2 neurologic toxicity
    "create-lab",  # ServiceRequest; params["orderable"] names an entry of protocol `orderables`
]


@dataclass(frozen=True, slots=True)
class Evidence:
    """One piece of data a rule used, as shown to the clinician: label, value with unit, date, resource."""

    label: str
    value: str
    date: str | None = None
    reference: str | None = None


@dataclass(frozen=True, slots=True)
class SuggestionSpec:
    kind: SuggestionKind
    order_id: str | None = None  # the draft tarlatamab MedicationRequest id this suggestion is about
    params: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Finding:
    """The outcome of one rule for one order (or for the patient when `order_id` is None).

    `values` fill the card templates of `cards/` (keyed by rule id); `evidence` lists the data used;
    `indicator` is None to take the protocol rule's indicator for the hook.
    """

    rule_id: str
    order_id: str | None = None
    values: dict[str, object] = field(default_factory=dict)
    evidence: tuple[Evidence, ...] = ()
    suggestions: tuple[SuggestionSpec, ...] = ()
    indicator: str | None = None
    # Other findings this one summarises (patient-view): value name -> findings whose rendered summaries
    # fill that template value, joined with "; ".
    related: tuple[tuple[str, tuple[Finding, ...]], ...] = ()
