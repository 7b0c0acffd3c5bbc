"""Fill a store through the real service: the governance corpus replayed through the Flask app under two
protocol versions, synthetic clinician feedback posted to the feedback endpoint, and a few bad requests."""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cds_service.settings import REPO_ROOT

CORPUS_DIRS = (REPO_ROOT / "fixtures" / "requests", REPO_ROOT / "fixtures" / "corpus")
SERVICE_OF_HOOK = {
    "order-sign": "tarlatamab-order-sign",
    "order-select": "tarlatamab-order-select",
    "patient-view": "tarlatamab-patient-view",
}
# Planted in feedback comments and never to be shown by the report.
COMMENT_SENTINEL = "free-text-comment-7f3e"


@dataclass
class Filled:
    responses: int = 0
    cards: int = 0
    feedback_items: int = 0
    errors: dict[int, int] = field(default_factory=dict)
    patient_ids: set[str] = field(default_factory=set)
    hook_instances: set[str] = field(default_factory=set)


def corpus_bodies() -> list[dict[str, Any]]:
    files = sorted(p for d in CORPUS_DIRS for p in d.rglob("*.json"))
    return [json.loads(p.read_text(encoding="utf-8")) for p in files]


def _feedback_for(card: dict[str, Any], rng: random.Random, stamp: str) -> dict[str, Any] | None:
    choice = rng.choices(["accepted", "overridden", None], weights=[3, 4, 3])[0]
    if choice == "accepted" and card.get("suggestions"):
        return {
            "card": card["uuid"],
            "outcome": "accepted",
            "outcomeTimestamp": stamp,
            "acceptedSuggestions": [{"id": rng.choice(card["suggestions"])["uuid"]}],
        }
    if choice is None:
        return None
    item: dict[str, Any] = {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": stamp}
    reasons = card.get("overrideReasons") or []
    if reasons and rng.random() < 0.85:
        item["overrideReason"] = {"reason": rng.choice(reasons), "userComment": f"{COMMENT_SENTINEL} see note"}
    return item


def post_round(client: Any, rng: random.Random, filled: Filled, suffix: str) -> None:
    """Every corpus request once (a fresh hookInstance each round), then feedback on some of its cards."""
    for n, body in enumerate(corpus_bodies()):
        body["hookInstance"] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{body['hookInstance']}|{suffix}"))
        service = SERVICE_OF_HOOK[body["hook"]]
        response = client.post(f"/cds-services/{service}", json=body)
        assert response.status_code == 200, response.data
        cards = response.get_json()["cards"]
        filled.responses += 1
        filled.cards += len(cards)
        filled.patient_ids.add(body["context"]["patientId"])
        filled.hook_instances.add(body["hookInstance"])
        items = [
            item for card in cards if (item := _feedback_for(card, rng, f"2026-11-21T10:{n % 60:02d}:00Z")) is not None
        ]
        if items:
            answer = client.post(f"/cds-services/{service}/feedback", json={"feedback": items})
            assert answer.status_code == 200, answer.data
            # An EHR retry of the same report: stored once.
            assert client.post(f"/cds-services/{service}/feedback", json={"feedback": items}).status_code == 200
            filled.feedback_items += len(items)


def post_errors(client: Any, filled: Filled) -> None:
    """Requests the service answers with an error: not JSON, malformed JSON, no context, draftOrders that is not
    a Bundle. (A tarlatamab draft the service cannot fully read is answered with cards, never an error.)"""
    url = "/cds-services/tarlatamab-order-sign"
    bad = [
        (client.post(url, data=b"hello", content_type="text/plain"), 415),
        (client.post(url, data=b'{"hook": "order-sign",', content_type="application/json"), 400),
        (client.post(url, json={"hook": "order-sign", "hookInstance": "e0000000-0000-4000-8000-000000000001"}), 400),
    ]
    body = corpus_bodies()[0]
    body["hookInstance"] = "e0000000-0000-4000-8000-000000000002"
    # The drafts sent as a bare list of resources, not the Bundle CDS Hooks requires: a malformed hook request.
    body["context"]["draftOrders"] = [entry["resource"] for entry in body["context"]["draftOrders"]["entry"]]
    bad.append((client.post(url, json=body), 400))
    for response, status in bad:
        assert response.status_code == status, (response.status_code, response.data)
        filled.errors[status] = filled.errors.get(status, 0) + 1


def fill_store(
    make_app: Callable[..., Any], database_url: str, candidate: Path, rounds: int = 1, seed: int = 12
) -> Filled:
    """Replay the corpus under the current protocol and under `candidate` (another version), with feedback."""
    rng = random.Random(seed)
    filled = Filled()
    for version_index, protocol_file in enumerate((None, candidate)):
        overrides: dict[str, Any] = {"database_url": database_url}
        if protocol_file is not None:
            overrides["protocol_file"] = Path(protocol_file)
        app = make_app(**overrides)
        with app.test_client() as client:
            for r in range(rounds):
                post_round(client, rng, filled, f"{version_index}{r:03d}")
            if version_index == 0:
                post_errors(client, filled)
        assert app.extensions["cds_audit_writer"].flush()
    return filled
