"""PLACEHOLDER: to be implemented (see issue 3)."""

from __future__ import annotations

from ..facts import DraftOrder, PatientFacts
from ..findings import Finding
from ..protocol import Protocol
from . import EvaluationContext


def check_administration(
    facts: PatientFacts, order: DraftOrder, protocol: Protocol, ctx: EvaluationContext
) -> list[Finding]:
    return []
