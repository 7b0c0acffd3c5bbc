"""A CDS Hooks 2.0 response validator (spec sections 5.1-5.9 and the 3.0 invariants cds-resp-1..6).

Returns a list of problems (empty = valid), so a test can show every problem at once.
"""

from __future__ import annotations

import re
from typing import Any

from fhir.resources.R4B import get_fhir_model_class

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[1-5][0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
TOPIC_SYSTEM = "urn:tarlatamab-cds:card-topic"
TOPICS = {
    "dose", "schedule", "premedication", "hydration", "monitoring", "administration", "labs-missing",
    "lab-hold", "crs", "neurotoxicity", "pregnancy", "lactation", "eligibility", "organ-function",
    "infection", "data-quality", "summary",
}  # fmt: skip


def _empty_values(value: Any, path: str) -> list[str]:
    problems = []
    if value is None:
        problems.append(f"{path} is null")
    elif isinstance(value, (str, list, dict)) and len(value) == 0:
        problems.append(f"{path} is empty")
    elif isinstance(value, dict):
        for key, inner in value.items():
            problems.extend(_empty_values(inner, f"{path}.{key}"))
    elif isinstance(value, list):
        for i, inner in enumerate(value):
            problems.extend(_empty_values(inner, f"{path}[{i}]"))
    return problems


def card_problems(card: Any, path: str = "card") -> list[str]:
    if not isinstance(card, dict):
        return [f"{path} is not an object"]
    problems = _empty_values(card, path)
    summary = card.get("summary")
    if not isinstance(summary, str) or not summary:
        problems.append(f"{path}.summary missing")
    elif len(summary) >= 140:
        problems.append(f"{path}.summary has {len(summary)} characters (must be < 140)")
    if card.get("indicator") not in ("info", "warning", "critical"):
        problems.append(f"{path}.indicator {card.get('indicator')!r} invalid")
    if not isinstance(card.get("uuid"), str) or not UUID_RE.match(card["uuid"]):
        problems.append(f"{path}.uuid missing or not a UUID")
    if "detail" in card and not isinstance(card["detail"], str):
        problems.append(f"{path}.detail not a string")
    source = card.get("source")
    if not isinstance(source, dict) or not isinstance(source.get("label"), str):
        problems.append(f"{path}.source.label missing")
    else:
        topic = source.get("topic")
        if not isinstance(topic, dict) or topic.get("system") != TOPIC_SYSTEM or topic.get("code") not in TOPICS:
            problems.append(f"{path}.source.topic must be a Coding of {TOPIC_SYSTEM} with a contract topic code")
        for key in ("url", "icon"):
            if key in source and not str(source[key]).startswith(("http://", "https://")):
                problems.append(f"{path}.source.{key} must be absolute")
    suggestions = card.get("suggestions")
    if suggestions is not None:
        if card.get("selectionBehavior") not in ("at-most-one", "any"):
            problems.append(f"{path}.selectionBehavior required with suggestions")
        if card.get("selectionBehavior") == "at-most-one":
            recommended = [s for s in suggestions if isinstance(s, dict) and s.get("isRecommended")]
            if len(recommended) > 1:
                problems.append(f"{path}: at-most-one with several isRecommended suggestions")
        for i, suggestion in enumerate(suggestions):
            problems.extend(_suggestion_problems(suggestion, f"{path}.suggestions[{i}]"))
    elif "selectionBehavior" in card:
        problems.append(f"{path}.selectionBehavior without suggestions")
    for i, reason in enumerate(card.get("overrideReasons") or []):
        if not isinstance(reason, dict) or not all(
            isinstance(reason.get(k), str) for k in ("code", "system", "display")
        ):
            problems.append(f"{path}.overrideReasons[{i}] needs code, system and display")
    for i, link in enumerate(card.get("links") or []):
        lp = f"{path}.links[{i}]"
        if not isinstance(link, dict) or not all(isinstance(link.get(k), str) for k in ("label", "url", "type")):
            problems.append(f"{lp} needs label, url and type")
            continue
        if link["type"] not in ("absolute", "smart"):
            problems.append(f"{lp}.type invalid")
        if link["type"] != "smart" and "appContext" in link:
            problems.append(f"{lp}.appContext only with smart links")
        if not link["url"].startswith(("http://", "https://")):
            problems.append(f"{lp}.url must be absolute")
    return problems


def _suggestion_problems(suggestion: Any, path: str) -> list[str]:
    if not isinstance(suggestion, dict):
        return [f"{path} is not an object"]
    problems = []
    if not isinstance(suggestion.get("label"), str):
        problems.append(f"{path}.label missing")
    if not isinstance(suggestion.get("uuid"), str) or not UUID_RE.match(suggestion["uuid"]):
        problems.append(f"{path}.uuid missing or not a UUID")
    actions = suggestion.get("actions")
    if not isinstance(actions, list) or not actions:
        problems.append(f"{path}.actions missing")
        return problems
    for j, action in enumerate(actions):
        ap = f"{path}.actions[{j}]"
        if not isinstance(action, dict) or action.get("type") not in ("create", "update", "delete"):
            problems.append(f"{ap}.type invalid")
            continue
        if not isinstance(action.get("description"), str) or not action["description"]:
            problems.append(f"{ap}.description missing")
        if action["type"] == "delete":
            if not isinstance(action.get("resourceId"), str) or "/" not in action["resourceId"]:
                problems.append(f"{ap}.resourceId (Type/id) required for delete")
            if "resource" in action:
                problems.append(f"{ap}: delete must not carry a resource")
        else:
            resource = action.get("resource")
            if not isinstance(resource, dict):
                problems.append(f"{ap}.resource required for {action['type']}")
                continue
            try:
                get_fhir_model_class(resource["resourceType"]).model_validate(resource)
            except Exception as exc:
                problems.append(f"{ap}.resource is not valid R4 FHIR: {type(exc).__name__}")
            if resource.get("resourceType") == "MedicationRequest" and action["type"] == "update":
                dose = resource["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]
                if dose.get("value") not in (1, 10) or dose.get("code") != "mg":
                    problems.append(f"{ap}: a tarlatamab dose other than 1 mg or 10 mg was suggested")
    return problems


def response_problems(body: Any) -> list[str]:
    if not isinstance(body, dict) or not isinstance(body.get("cards"), list):
        return ["response must be an object with a cards array"]
    problems = []
    if "systemActions" in body and not body["systemActions"]:
        problems.append("systemActions present but empty")
    uuids = [c.get("uuid") for c in body["cards"] if isinstance(c, dict)]
    if len(uuids) != len(set(uuids)):
        problems.append("card uuids are not unique")
    for i, card in enumerate(body["cards"]):
        problems.extend(card_problems(card, f"cards[{i}]"))
        if isinstance(card, dict):
            problems.extend(card_text_problems(card, f"cards[{i}]"))
    problems.extend(contradicting_suggestions([c for c in body["cards"] if isinstance(c, dict)]))
    return problems


def assert_valid_response(body: Any) -> None:
    problems = response_problems(body)
    assert not problems, "invalid CDS Hooks response:\n" + "\n".join(problems)


# --- words for clinicians (issue 9) ---------------------------------------------------------------------
# Internal references no clinician can follow, and unit codes no clinician writes.
INTERNAL_REFERENCE_RE = re.compile(
    r"(?i)\bseed\b|spec/|protocol\.md|\.ya?ml\b|\.py\b|protocol section|\bsection 1[0-3]\b|section service|"
    r"\(s\)|\*\*Rule\*\* `"
)
RAW_UCUM_RE = re.compile(r"10\*\d|10\^\d|\{(?:pill|cells|tbl|1\.73_m2)\}|\[IU\]|(?<![A-Za-zµ])uL\b|x10\b| x ULN")


def card_text_problems(card: dict[str, Any], path: str = "card") -> list[str]:
    """Text a clinician reads (summary, detail, labels) names no internal document and no raw unit code."""
    problems = []
    texts = [("summary", card.get("summary", "")), ("detail", card.get("detail", ""))]
    texts += [(f"suggestions[{i}].label", s.get("label", "")) for i, s in enumerate(card.get("suggestions") or [])]
    texts.append(("source.label", (card.get("source") or {}).get("label", "")))
    for where, text in texts:
        for regex, what in ((INTERNAL_REFERENCE_RE, "an internal reference"), (RAW_UCUM_RE, "a raw unit code")):
            match = regex.search(str(text))
            if match:
                problems.append(f"{path}.{where} contains {what}: {match.group(0)!r} in {str(text)[:200]!r}")
    url = (card.get("source") or {}).get("url")
    if not isinstance(url, str) or not re.search(r"^https?://[^#]+/protocol#rule-[a-z0-9.-]+$", url):
        problems.append(f"{path}.source.url must be the card's rule on the protocol page, got {url!r}")
    return problems


def contradicting_suggestions(cards: list[dict[str, Any]]) -> list[str]:
    """A draft order that one suggestion deletes and another updates (e.g. "change dose" beside "cancel")."""
    deleted, updated = set(), set()
    for card in cards:
        for suggestion in card.get("suggestions") or []:
            for action in suggestion.get("actions") or []:
                if action.get("type") == "delete":
                    deleted.add(action.get("resourceId"))
                elif action.get("type") == "update" and isinstance(action.get("resource"), dict):
                    resource = action["resource"]
                    updated.add(f"{resource.get('resourceType')}/{resource.get('id')}")
    return [f"{ref} is both deleted and updated by suggestions" for ref in sorted(deleted & updated)]
