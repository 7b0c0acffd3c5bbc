"""PLACEHOLDER (issue 3): clinical facts from Patient, Observation and Condition resources."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from .facts import CodedCondition, DataIssue, GradePoint, LabResult, PregnancyEvidence, ToxicityEpisode
from .protocol import Protocol


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
    resources: dict[str, list[dict[str, Any]]], protocol: Protocol, now: datetime
) -> ClinicalFacts:
    return ClinicalFacts()
