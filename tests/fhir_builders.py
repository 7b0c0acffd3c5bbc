"""Builders of realistic FHIR R4 resources and CDS Hooks requests for tests and fixtures.

Codes are real (LOINC, ICD-10-CM, SNOMED CT, RxNorm, NDC), units are UCUM, lab results carry reference
ranges as a hospital LIS sends them. Every builder returns plain JSON dicts, as an EHR would send them.
"""

from __future__ import annotations

import copy
import uuid
from typing import Any

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
SNOMED = "http://snomed.info/sct"
ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
NDC = "http://hl7.org/fhir/sid/ndc"
LOCAL = "urn:tarlatamab-cds"

PATIENT_ID = "pt-sclc-001"

# analyte -> (LOINC, display, default UCUM unit, reference low, reference high)
LABS: dict[str, tuple[str, str, str, float | None, float | None]] = {
    "anc": ("751-8", "Neutrophils [#/volume] in Blood by Automated count", "10*3/uL", 1.8, 7.7),
    "hemoglobin": ("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", 12.0, 16.0),
    "platelets": ("777-3", "Platelets [#/volume] in Blood by Automated count", "10*3/uL", 150, 400),
    "alt": ("1742-6", "Alanine aminotransferase [Enzymatic activity/volume] in Serum or Plasma", "U/L", 7, 40),
    "ast": ("1920-8", "Aspartate aminotransferase [Enzymatic activity/volume] in Serum or Plasma", "U/L", 10, 40),
    "bilirubin": ("1975-2", "Bilirubin.total [Mass/volume] in Serum or Plasma", "mg/dL", 0.1, 1.2),
    "sodium": ("2951-2", "Sodium [Moles/volume] in Serum or Plasma", "mmol/L", 136, 145),
    "potassium": ("2823-3", "Potassium [Moles/volume] in Serum or Plasma", "mmol/L", 3.5, 5.1),
    "uric_acid": ("3084-1", "Urate [Mass/volume] in Serum or Plasma", "mg/dL", 3.5, 7.2),
    "egfr": (
        "98979-8",
        "Glomerular filtration rate/1.73 sq M.predicted [Volume Rate/Area] in Serum, Plasma or Blood by Creatinine-based formula (CKD-EPI 2021)",
        "mL/min/{1.73_m2}",
        60,
        None,
    ),
}

# Normal values in the default units: a patient with these results passes every lab check.
NORMAL_LABS = {
    "anc": 3.4, "hemoglobin": 12.8, "platelets": 212, "alt": 24, "ast": 27, "bilirubin": 0.6,
}  # fmt: skip


def _id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def patient(
    pid: str = PATIENT_ID, gender: str = "male", birth_date: str | None = "1961-04-12", name: str = "Okafor"
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Patient",
        "id": pid,
        "meta": {"lastUpdated": "2026-11-01T08:00:00Z"},
        "identifier": [
            {
                "use": "usual",
                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
                "system": "urn:oid:2.16.840.1.113883.19.5",
                "value": "MRN-448812",
            }
        ],
        "active": True,
        "name": [{"use": "official", "family": name, "given": ["Chidi"]}],
        "gender": gender,
    }
    if birth_date is not None:
        resource["birthDate"] = birth_date
    return resource


def lab(
    analyte: str,
    value: float | None,
    when: str,
    *,
    unit: str | None = None,
    oid: str | None = None,
    ref_high: float | str | None = "default",
    loinc: str | None = None,
    status: str = "final",
    pid: str = PATIENT_ID,
) -> dict[str, Any]:
    """A laboratory Observation. `unit` is the UCUM code (default: the analyte's usual unit)."""
    code, display, default_unit, low, high = LABS[analyte]
    unit = unit or default_unit
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": oid or _id(analyte.replace("_", "")),
        "status": status,
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "laboratory",
                        "display": "Laboratory",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": LOINC, "code": loinc or code, "display": display}], "text": display},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": when,
        "issued": when,
    }
    if value is not None:
        resource["valueQuantity"] = {"value": value, "unit": unit, "system": UCUM, "code": unit}
    else:
        resource["dataAbsentReason"] = {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/data-absent-reason", "code": "error"}]
        }
    if ref_high == "default":
        ref_high = high if unit == default_unit else None
    ref: dict[str, Any] = {}
    if low is not None and unit == default_unit:
        ref["low"] = {"value": low, "unit": unit, "system": UCUM, "code": unit}
    if ref_high is not None:
        ref["high"] = {"value": ref_high, "unit": unit, "system": UCUM, "code": unit}
    if ref:
        resource["referenceRange"] = [ref]
    return resource


def normal_labs(when: str, **overrides: float) -> list[dict[str, Any]]:
    """A full pre-dose panel (CBC + hepatic) with normal values, drawn at `when`."""
    values = {**NORMAL_LABS, **overrides}
    return [lab(analyte, value, when) for analyte, value in values.items()]


def grade_observation(kind: str, value: int, when: str, *, oid: str | None = None, pid: str = PATIENT_ID) -> dict:
    """A clinician-recorded grade (crs-grade, icans-grade, neurotox-grade) or ICE score (ice-score)."""
    display = {
        "crs-grade": "Cytokine release syndrome grade (ASTCT)",
        "icans-grade": "ICANS grade (ASTCT)",
        "neurotox-grade": "Neurologic toxicity grade (CTCAE v5.0)",
        "ice-score": "Immune effector cell encephalopathy (ICE) score",
    }[kind]
    return {
        "resourceType": "Observation",
        "id": oid or _id(kind),
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "survey" if kind == "ice-score" else "exam",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": LOCAL, "code": kind, "display": display}], "text": display},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": when,
        "valueInteger": value,
    }


def coded_observation(loinc: str, display: str, answer: dict[str, str] | None, when: str, **extra: Any) -> dict:
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": _id("obs"),
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": loinc, "display": display}]},
        "subject": {"reference": f"Patient/{PATIENT_ID}"},
        "effectiveDateTime": when,
    }
    if answer is not None:
        resource["valueCodeableConcept"] = {"coding": [answer]}
    resource.update(extra)
    return resource


def pregnancy_status(pregnant: bool, when: str) -> dict[str, Any]:
    answer = (
        {"system": SNOMED, "code": "77386006", "display": "Pregnant"}
        if pregnant
        else {"system": SNOMED, "code": "60001007", "display": "Not pregnant"}
    )
    return coded_observation("82810-3", "Pregnancy status", answer, when)


def hcg_urine(positive: bool, when: str) -> dict[str, Any]:
    code = "POS" if positive else "NEG"
    interp = {
        "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
        "code": code,
        "display": "Positive" if positive else "Negative",
    }
    return coded_observation(
        "2106-3",
        "Choriogonadotropin (pregnancy test) [Presence] in Urine",
        {"system": SNOMED, "code": "10828004" if positive else "260385009",
         "display": "Positive" if positive else "Negative"},
        when,
        interpretation=[{"coding": [interp]}],
    )  # fmt: skip


def hcg_quantitative(value: float, when: str, unit: str = "m[IU]/mL") -> dict[str, Any]:
    resource = coded_observation(
        "21198-7", "Choriogonadotropin.beta subunit [Units/volume] in Serum or Plasma", None, when
    )
    resource["valueQuantity"] = {"value": value, "unit": unit, "system": UCUM, "code": unit}
    return resource


def breastfeeding(when: str, currently: bool = True) -> dict[str, Any]:
    answer = (
        {"system": LOINC, "code": "LA29252-6", "display": "Currently breastfeeding"}
        if currently
        else {"system": LOINC, "code": "LA29253-4", "display": "Not currently breastfeeding"}
    )
    return coded_observation("63895-7", "Breastfeeding status", answer, when)


TARLATAMAB_1MG = {
    "coding": [{"system": NDC, "code": "55513-059-01", "display": "IMDELLTRA (tarlatamab-dlle) 1 mg kit"}],
    "text": "tarlatamab-dlle 1 mg IV infusion",
}
TARLATAMAB_10MG = {
    "coding": [{"system": NDC, "code": "55513-077-01", "display": "IMDELLTRA (tarlatamab-dlle) 10 mg kit"}],
    "text": "tarlatamab-dlle 10 mg IV infusion",
}


def administration(
    when: str,
    dose: float = 10,
    unit: str = "mg",
    *,
    aid: str | None = None,
    status: str = "completed",
    pid: str = PATIENT_ID,
    period: bool = False,
) -> dict[str, Any]:
    """A tarlatamab MedicationAdministration (a dose given at `when`, an ISO date-time with zone)."""
    resource: dict[str, Any] = {
        "resourceType": "MedicationAdministration",
        "id": aid or _id("tarla-adm"),
        "status": status,
        "medicationCodeableConcept": copy.deepcopy(TARLATAMAB_1MG if dose == 1 else TARLATAMAB_10MG),
        "subject": {"reference": f"Patient/{pid}"},
        "dosage": {
            "route": {"coding": [{"system": SNOMED, "code": "47625008", "display": "Intravenous route"}]},
            "dose": {"value": dose, "unit": unit, "system": UCUM, "code": unit},
            "rateQuantity": {"value": 250, "unit": "mL/h", "system": UCUM, "code": "mL/h"},
        },
    }
    if period:
        resource["effectivePeriod"] = {"start": when}
    else:
        resource["effectiveDateTime"] = when
    return resource


def tarlatamab_order(
    planned: str | None,
    dose: float | None = 10,
    unit: str = "mg",
    *,
    oid: str = "tarla-order-1",
    status: str = "draft",
    rate: tuple[float, str] | None = (250, "mL/h"),
    duration: tuple[float, str] | None = (1, "h"),
    bounds_start: str | None = None,
    pid: str = PATIENT_ID,
) -> dict[str, Any]:
    """A draft tarlatamab MedicationRequest planned for `planned` (timing.event)."""
    timing: dict[str, Any] = {}
    if planned is not None:
        timing["event"] = [planned]
    repeat: dict[str, Any] = {"count": 1}
    if duration is not None:
        repeat["duration"] = duration[0]
        repeat["durationUnit"] = duration[1]
    if bounds_start is not None:
        repeat["boundsPeriod"] = {"start": bounds_start}
    timing["repeat"] = repeat
    dose_and_rate: dict[str, Any] = {}
    if dose is not None:
        dose_and_rate["doseQuantity"] = {"value": dose, "unit": unit, "system": UCUM, "code": unit}
    if rate is not None:
        dose_and_rate["rateQuantity"] = {"value": rate[0], "unit": rate[1], "system": UCUM, "code": rate[1]}
    dosage: dict[str, Any] = {
        "sequence": 1,
        "text": f"tarlatamab {dose:g} {unit} IV over 1 hour" if dose is not None else "tarlatamab IV",
        "timing": timing,
        "route": {"coding": [{"system": SNOMED, "code": "47625008", "display": "Intravenous route"}]},
    }
    if dose_and_rate:
        dosage["doseAndRate"] = [dose_and_rate]
    return {
        "resourceType": "MedicationRequest",
        "id": oid,
        "status": status,
        "intent": "order",
        "medicationCodeableConcept": copy.deepcopy(TARLATAMAB_1MG if dose == 1 else TARLATAMAB_10MG),
        "subject": {"reference": f"Patient/{pid}"},
        "authoredOn": "2026-11-20T15:00:00Z",
        "requester": {"reference": "Practitioner/onc-42", "display": "Dr. A. Lindqvist"},
        "dosageInstruction": [dosage],
    }


def dexamethasone_order(
    planned: str | None, dose: float = 8, *, oid: str = "dexa-order-1", status: str = "draft"
) -> dict[str, Any]:
    dosage: dict[str, Any] = {
        "text": f"dexamethasone {dose:g} mg IV once, 60 minutes before tarlatamab",
        "route": {"coding": [{"system": SNOMED, "code": "47625008", "display": "Intravenous route"}]},
        "doseAndRate": [{"doseQuantity": {"value": dose, "unit": "mg", "system": UCUM, "code": "mg"}}],
    }
    if planned is not None:
        dosage["timing"] = {"event": [planned]}
    return {
        "resourceType": "MedicationRequest",
        "id": oid,
        "status": status,
        "intent": "order",
        "medicationCodeableConcept": {
            "coding": [{"system": RXNORM, "code": "3264", "display": "dexamethasone"}],
            "text": "dexamethasone 4 mg/mL injection",
        },
        "subject": {"reference": f"Patient/{PATIENT_ID}"},
        "authoredOn": "2026-11-20T15:00:00Z",
        "dosageInstruction": [dosage],
    }


def saline_order(
    planned: str | None, volume_ml: float = 1000, *, oid: str = "nacl-order-1", status: str = "draft"
) -> dict[str, Any]:
    dosage: dict[str, Any] = {
        "text": f"sodium chloride 0.9% {volume_ml:g} mL IV over 4-5 hours after tarlatamab",
        "route": {"coding": [{"system": SNOMED, "code": "47625008", "display": "Intravenous route"}]},
        "doseAndRate": [{"doseQuantity": {"value": volume_ml, "unit": "mL", "system": UCUM, "code": "mL"}}],
    }
    if planned is not None:
        dosage["timing"] = {"event": [planned], "repeat": {"duration": 4, "durationMax": 5, "durationUnit": "h"}}
    return {
        "resourceType": "MedicationRequest",
        "id": oid,
        "status": status,
        "intent": "order",
        "medicationCodeableConcept": {
            "coding": [{"system": RXNORM, "code": "9863", "display": "sodium chloride"}],
            "text": "sodium chloride 0.9% injection 1000 mL bag",
        },
        "subject": {"reference": f"Patient/{PATIENT_ID}"},
        "authoredOn": "2026-11-20T15:00:00Z",
        "dosageInstruction": [dosage],
    }


def platinum_administration(when: str, drug: str = "carboplatin") -> dict[str, Any]:
    code = {"carboplatin": "40048", "cisplatin": "2555"}[drug]
    return {
        "resourceType": "MedicationAdministration",
        "id": _id(drug),
        "status": "completed",
        "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": code, "display": drug}]},
        "subject": {"reference": f"Patient/{PATIENT_ID}"},
        "effectiveDateTime": when,
    }


def platinum_request(when: str, drug: str = "carboplatin", status: str = "completed") -> dict[str, Any]:
    code = {"carboplatin": "40048", "cisplatin": "2555"}[drug]
    return {
        "resourceType": "MedicationRequest",
        "id": _id(drug),
        "status": status,
        "intent": "order",
        "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": code, "display": drug}]},
        "subject": {"reference": f"Patient/{PATIENT_ID}"},
        "authoredOn": when,
    }


def condition(
    system: str,
    code: str,
    display: str,
    onset: str | None,
    *,
    clinical_status: str = "active",
    abatement: str | None = None,
    cid: str | None = None,
    text: str | None = None,
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Condition",
        "id": cid or _id("cond"),
        "clinicalStatus": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": clinical_status}]
        },
        "verificationStatus": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}]
        },
        "category": [
            {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/condition-category", "code": "problem-list-item"}
                ]
            }
        ],
        "code": {"coding": [{"system": system, "code": code, "display": display}], "text": text or display},
        "subject": {"reference": f"Patient/{PATIENT_ID}"},
    }
    if onset is not None:
        resource["onsetDateTime"] = onset
        resource["recordedDate"] = onset
    if abatement is not None:
        resource["abatementDateTime"] = abatement
    return resource


def sclc_condition(onset: str = "2025-12-02") -> dict[str, Any]:
    return condition(
        SNOMED, "254632001", "Small cell carcinoma of lung", onset, text="Extensive-stage small cell lung cancer"
    )


def crs_condition(grade: int | None, onset: str, abatement: str | None = None, **kw: Any) -> dict[str, Any]:
    code = {1: "D89.831", 2: "D89.832", 3: "D89.833", 4: "D89.834", 5: "D89.835", None: "D89.839"}[grade]
    display = f"Cytokine release syndrome, grade {grade}" if grade else "Cytokine release syndrome, grade unspecified"
    status = "resolved" if abatement else kw.pop("clinical_status", "active")
    return condition(ICD10, code, display, onset, abatement=abatement, clinical_status=status, **kw)


def icans_condition(grade: int | None, onset: str, abatement: str | None = None, **kw: Any) -> dict[str, Any]:
    code = {1: "G92.01", 2: "G92.02", 3: "G92.03", 4: "G92.04", 5: "G92.05", None: "G92.00"}[grade]
    display = (
        f"Immune effector cell-associated neurotoxicity syndrome, grade {grade}"
        if grade
        else "Immune effector cell-associated neurotoxicity syndrome, grade unspecified"
    )
    status = "resolved" if abatement else kw.pop("clinical_status", "active")
    return condition(ICD10, code, display, onset, abatement=abatement, clinical_status=status, **kw)


def searchset(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "entry": [
            {"fullUrl": f"https://ehr.example.org/fhir/{r['resourceType']}/{r['id']}", "resource": r,
             "search": {"mode": "match"}}
            for r in resources
        ],
    }  # fmt: skip


def hook_request(
    hook: str = "order-sign",
    *,
    drafts: list[dict[str, Any]] | None = None,
    patient_resource: dict[str, Any] | None = None,
    medications: list[dict[str, Any]] | None = None,
    administrations: list[dict[str, Any]] | None = None,
    observations: list[dict[str, Any]] | None = None,
    conditions: list[dict[str, Any]] | None = None,
    hook_instance: str | None = None,
    selections: list[str] | None = None,
    omit: tuple[str, ...] = (),
) -> dict[str, Any]:
    """A complete CDS Hooks request with all five prefetch keys (searchset Bundles)."""
    pt = patient_resource or patient()
    context: dict[str, Any] = {"userId": "Practitioner/onc-42", "patientId": pt["id"], "encounterId": "enc-7781"}
    if hook in ("order-sign", "order-select"):
        context["draftOrders"] = {"resourceType": "Bundle", "type": "collection",
                                  "entry": [{"resource": d} for d in (drafts or [])]}  # fmt: skip
    if hook == "order-select":
        context["selections"] = (
            selections
            or [f"MedicationRequest/{d['id']}" for d in (drafts or []) if d.get("resourceType") == "MedicationRequest"][
                :1
            ]
        )
    prefetch = {
        "patient": pt,
        "medications": searchset(medications or []),
        "administrations": searchset(administrations or []),
        "observations": searchset(observations or []),
        "conditions": searchset(conditions or []),
    }
    for key in omit:
        prefetch.pop(key)
    return {
        "hookInstance": hook_instance or str(uuid.uuid4()),
        "hook": hook,
        "context": context,
        "prefetch": prefetch,
    }
