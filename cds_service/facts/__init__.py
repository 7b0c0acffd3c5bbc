"""Facts: what a pharmacist means, built from the records read by `cds_service.reading`.

- `model`: the dataclasses the rules read (no FHIR JSON beyond them);
- `orders`: draft tarlatamab orders and premedication/hydration orders;
- `history`: administrations, one dose per local date, schedule positions (section 2.1);
- `labs`: laboratory results (ANC, platelets, liver tests, ...), liver events (section 13.6);
- `toxicity`: CRS / ICANS / neurologic toxicity grades and episodes;
- `populations`: patient, pregnancy, breastfeeding, diagnoses, infections;
- `build`: everything together (`build_facts`).
"""

from .model import (
    Administration,
    CodedCondition,
    CompanionOrder,
    DataIssue,
    Dose,
    DraftOrder,
    GradePoint,
    LabResult,
    PatientFacts,
    PregnancyEvidence,
    SchedulePosition,
    ToxicityEpisode,
    ToxicityKind,
)

__all__ = [
    "Administration",
    "CodedCondition",
    "CompanionOrder",
    "DataIssue",
    "Dose",
    "DraftOrder",
    "GradePoint",
    "LabResult",
    "PatientFacts",
    "PregnancyEvidence",
    "SchedulePosition",
    "ToxicityEpisode",
    "ToxicityKind",
]
