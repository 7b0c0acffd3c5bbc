"""The three CDS services of the contract (the service contract) and their prefetch templates."""

from __future__ import annotations

from dataclasses import dataclass

from .protocol import Protocol

PREFETCH_KEYS = ("patient", "medications", "administrations", "observations", "conditions")

# Context fields each hook requires (Hook Library STU1 1.0.1).
REQUIRED_CONTEXT = {
    "patient-view": ("userId", "patientId"),
    "order-select": ("userId", "patientId", "selections", "draftOrders"),
    "order-sign": ("userId", "patientId", "draftOrders"),
}


@dataclass(frozen=True)
class ServiceDef:
    id: str
    hook: str
    title: str
    description: str

    @property
    def evaluates_orders(self) -> bool:
        return self.hook in ("order-select", "order-sign")


SERVICES: tuple[ServiceDef, ...] = (
    ServiceDef(
        id="tarlatamab-order-sign",
        hook="order-sign",
        title="Tarlatamab (IMDELLTRA) order check",
        description=(
            "Full protocol check of the tarlatamab order(s) being signed: step-up and maintenance dose, "
            "restart after delay or Grade 3 CRS, timing, premedication, hydration, monitoring, pre-dose "
            "labs and lab holds, CRS and neurologic toxicity, pregnancy, lactation, age, indication, "
            "organ function and infection."
        ),
    ),
    ServiceDef(
        id="tarlatamab-order-select",
        hook="order-select",
        title="Tarlatamab (IMDELLTRA) order advice",
        description=(
            "The tarlatamab protocol checks while the clinician is still composing the order; "
            "premedication and hydration orders are advised as information."
        ),
    ),
    ServiceDef(
        id="tarlatamab-patient-view",
        hook="patient-view",
        title="Tarlatamab (IMDELLTRA) treatment summary",
        description=(
            "For a patient on tarlatamab: one summary card with the next dose (date, schedule position, "
            "expected dose), the monitoring it needs, labs due and any active hold or discontinuation."
        ),
    ),
)

SERVICES_BY_ID = {s.id: s for s in SERVICES}


def prefetch_templates(protocol: Protocol) -> dict[str, str]:
    """The five prefetch templates; the Observation codes come from the protocol's value sets."""
    loinc = protocol.data["systems"]["loinc"]
    local = protocol.data["systems"]["local"]
    codes = [f"{loinc}|{code}" for codes in protocol.data["observations"].values() for code in codes]
    codes += [f"{local}|{code}" for code in protocol.data["local_observation_codes"].values()]
    patient = "{{context.patientId}}"
    return {
        "patient": f"Patient/{patient}",
        "medications": f"MedicationRequest?patient={patient}&_count=200",
        "administrations": f"MedicationAdministration?patient={patient}&_count=200",
        "observations": f"Observation?patient={patient}&code={','.join(codes)}&_sort=-date&_count=500",
        "conditions": f"Condition?patient={patient}&_count=200",
    }


def discovery_document(protocol: Protocol) -> dict[str, object]:
    templates = prefetch_templates(protocol)
    return {
        "services": [
            {
                "hook": s.hook,
                "title": s.title,
                "description": s.description,
                "id": s.id,
                "prefetch": dict(templates),
                "usageRequirements": (
                    "Send the five prefetch keys (or a fhirServer the service may query). "
                    f"Protocol {protocol.id} version {protocol.version}."
                ),
            }
            for s in SERVICES
        ]
    }
