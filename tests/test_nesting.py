"""Deeply nested JSON never reaches recursive code unchecked: 400 where the request's own structure nests too
deep, 400 naming the element for a draft tarlatamab order, a data-quality card for a prefetched resource."""

from __future__ import annotations

from typing import Any

from fhir_builders import administration, hook_request, lab, tarlatamab_order

ORDER_SIGN = "/cds-services/tarlatamab-order-sign"


def _deep(levels: int) -> dict[str, Any]:
    node: dict[str, Any] = {"url": "urn:x", "valueString": "x"}
    for _ in range(levels):
        node = {"url": "urn:x", "extension": [node]}
    return node


def test_deep_request_structure_is_a_400(client: Any) -> None:
    body = hook_request(drafts=[tarlatamab_order("2026-11-21T10:00:00Z", 1)])
    body["context"]["extension"] = {"org.example.deep": _deep(80)}
    response = client.post(ORDER_SIGN, json=body)
    assert response.status_code == 400
    assert "deeper than 64" in response.json["issue"][0]["diagnostics"]


def test_deep_draft_tarlatamab_order_gets_cards_and_a_critical_data_quality_card(client: Any) -> None:
    # Section 12: a recognisable tarlatamab draft is answered with cards, never a 400; the nesting is named.
    order = tarlatamab_order("2026-11-21T10:00:00Z", 1)
    order["extension"] = [_deep(80)]
    response = client.post(ORDER_SIGN, json=hook_request(drafts=[order]))
    assert response.status_code == 200
    quality = [c for c in response.json["cards"] if c["source"]["topic"]["code"] == "data-quality"]
    assert any(c["indicator"] == "critical" and "nests deeper" in c["detail"] for c in quality)


def test_deep_prefetched_resource_is_reported_not_a_500(client: Any) -> None:
    anc = lab("anc", 2.4, "2026-11-20T08:00:00Z", oid="anc-deep")
    anc["extension"] = [_deep(80)]
    body = hook_request(
        drafts=[tarlatamab_order("2026-11-21T10:00:00Z", 10)],
        administrations=[administration("2026-11-14T10:00:00Z", 1)],
        observations=[anc],
    )
    response = client.post(ORDER_SIGN, json=body)
    assert response.status_code == 200
    quality = [c for c in response.json["cards"] if c["source"]["topic"]["code"] == "data-quality"]
    assert any("Observation/anc-deep" in c["detail"] for c in quality)
