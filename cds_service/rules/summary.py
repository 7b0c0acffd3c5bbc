"""PLACEHOLDER: the patient-view summary card (to be implemented, issue 3)."""

from __future__ import annotations

from ..facts import PatientFacts
from ..findings import Finding
from ..protocol import Protocol
from . import EvaluationContext


def patient_summary(facts: PatientFacts, protocol: Protocol, ctx: EvaluationContext) -> list[Finding]:
    return []
