"""A compliant order raises nothing above `info`: alert fatigue is a safety problem too (issue 3).

Each scenario is a realistic patient whose record satisfies every rule for the dose being signed: correct
dose for the schedule position, on time, premedication and hydration ordered where required, pre-dose labs
normal and within 3 days, indication documented, no toxicity, no infection.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import pytest
from card_validator import assert_valid_response
from fhir_builders import (
    administration,
    dexamethasone_order,
    hook_request,
    normal_labs,
    patient,
    platinum_administration,
    pregnancy_status,
    saline_order,
    sclc_condition,
    tarlatamab_order,
)

PLANNED = date(2026, 11, 21)
ORDER_SIGN = "/cds-services/tarlatamab-order-sign"

# Offsets (days from C1D1) of the doses of the first sequence: C1D1, C1D8, C1D15, C2D1, C2D15, C3D1, ...
SEQUENCE = [("C1D1", 0), ("C1D8", 7), ("C1D15", 14)] + [
    (f"C{cycle}D{day}", 28 * (cycle - 1) + day - 1) for cycle in range(2, 8) for day in (1, 15)
]


def history_before(position: str) -> tuple[list[dict[str, Any]], float]:
    """The administrations given before `position` (on schedule) and the dose expected at `position`."""
    labels = [label for label, _ in SEQUENCE]
    index = labels.index(position)
    start = PLANNED - timedelta(days=SEQUENCE[index][1])
    given = [
        administration(f"{(start + timedelta(days=offset)).isoformat()}T14:00:00Z", 1 if label == "C1D1" else 10)
        for label, offset in SEQUENCE[:index]
    ]
    return given, (1 if position == "C1D1" else 10)


def compliant_request(position: str, hook: str = "order-sign", gender: str = "male") -> dict[str, Any]:
    given, dose = history_before(position)
    planned = f"{PLANNED.isoformat()}T14:00:00Z"
    drafts = [tarlatamab_order(planned, dose)]
    if position in ("C1D1", "C1D8"):
        drafts += [
            dexamethasone_order(f"{PLANNED.isoformat()}T13:00:00Z"),
            saline_order(f"{PLANNED.isoformat()}T15:00:00Z"),
        ]
    return hook_request(
        hook,
        drafts=drafts,
        patient_resource=patient(gender=gender, birth_date="1959-02-03"),
        administrations=[*given, platinum_administration("2026-03-02T10:00:00Z")],
        observations=normal_labs(f"{(PLANNED - timedelta(days=1)).isoformat()}T07:30:00Z"),
        conditions=[sclc_condition("2026-01-15")],
    )


@pytest.mark.parametrize("position", ["C1D1", "C1D8", "C2D15", "C3D1", "C6D1"])
@pytest.mark.parametrize("hook", ["order-sign", "order-select"])
def test_compliant_order_raises_nothing_above_info(client: Any, position: str, hook: str) -> None:
    service = "/cds-services/tarlatamab-" + hook
    response = client.post(service, json=compliant_request(position, hook))
    assert response.status_code == 200
    body = response.json
    assert_valid_response(body)
    loud = [
        (c["source"]["topic"]["code"], c["indicator"], c["summary"]) for c in body["cards"] if c["indicator"] != "info"
    ]
    assert loud == [], f"compliant {position} order raised {loud}"
    if hook == "order-select":
        # While composing, a compliant order is not interrupted: the plan card waits for order-sign (issue 9).
        assert body["cards"] == []
        return
    # Exactly one card: the plan for the dose (monitoring hours and the infusion), info (issue 9).
    (plan,) = body["cards"]
    assert plan["source"]["topic"]["code"] == "monitoring" and plan["indicator"] == "info"
    assert position in plan["summary"]
    assert "250 mL/h" in plan["detail"] and "CSTD" in plan["detail"]
    assert plan["source"]["url"].endswith("/protocol#rule-monitoring.schedule")
    if position in ("C1D1", "C1D8"):
        # Premedication and hydration already ordered are part of the plan.
        assert "dexamethasone 8 mg IV" in plan["detail"] and "sodium chloride 1000 mL" in plan["detail"]
        assert "caregiver" in plan["detail"]


def test_female_of_childbearing_age_at_c1d1_gets_contraception_advice_only(client: Any) -> None:
    body = compliant_request("C1D1", gender="female")
    body["prefetch"]["patient"]["birthDate"] = "1988-06-30"
    body["prefetch"]["observations"]["entry"].append({"resource": pregnancy_status(False, "2026-11-20T08:00:00Z")})
    response = client.post(ORDER_SIGN, json=body)
    assert_valid_response(response.json)
    loud = [c["summary"] for c in response.json["cards"] if c["indicator"] != "info"]
    assert loud == []
    # The contraception advice is a line of the one plan card (issue 9), not a card of its own.
    (plan,) = response.json["cards"]
    assert "effective contraception" in plan["detail"]


def test_order_select_only_evaluates_the_selected_tarlatamab_order(client: Any) -> None:
    body = compliant_request("C2D15", hook="order-select")
    body["context"]["selections"] = ["MedicationRequest/some-other-order"]
    response = client.post("/cds-services/tarlatamab-order-select", json=body)
    assert response.status_code == 200
    assert response.json == {"cards": []}
