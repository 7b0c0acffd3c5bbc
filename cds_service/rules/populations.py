"""PLACEHOLDER: to be implemented (see issue 3)."""

from __future__ import annotations

from ..facts import DraftOrder, PatientFacts
from ..findings import Finding
from ..protocol import Protocol
from . import EvaluationContext


def check_pregnancy(
    facts: PatientFacts, order: DraftOrder, protocol: Protocol, ctx: EvaluationContext
) -> list[Finding]:
    return []


def check_lactation(
    facts: PatientFacts, order: DraftOrder, protocol: Protocol, ctx: EvaluationContext
) -> list[Finding]:
    return []


def check_age(facts: PatientFacts, order: DraftOrder, protocol: Protocol, ctx: EvaluationContext) -> list[Finding]:
    return []


def check_indication(
    facts: PatientFacts, order: DraftOrder, protocol: Protocol, ctx: EvaluationContext
) -> list[Finding]:
    return []


def check_organ_function(
    facts: PatientFacts, order: DraftOrder, protocol: Protocol, ctx: EvaluationContext
) -> list[Finding]:
    return []


def check_infection(
    facts: PatientFacts, order: DraftOrder, protocol: Protocol, ctx: EvaluationContext
) -> list[Finding]:
    return []
