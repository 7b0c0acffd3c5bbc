"""The card set of one draft order (issue 9): one critical card per held order, one card per problem, one plan
card per good order; never contradicting suggestions; order-select never louder than order-sign; every
record-derived value escaped for Markdown and capped in length.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import replace
from typing import Any

import pytest
from card_validator import assert_valid_response
from conftest import FIXTURES
from fhir_builders import (
    administration,
    condition,
    dexamethasone_order,
    hook_request,
    lab,
    normal_labs,
    patient,
    platinum_administration,
    saline_order,
    sclc_condition,
    tarlatamab_order,
)
from markdown_it import MarkdownIt

from cds_service.card_set import assemble, role_of
from cds_service.card_text import safe_value
from cds_service.findings import Finding, SuggestionSpec
from cds_service.protocol import Protocol

ORDER_SIGN = "/cds-services/tarlatamab-order-sign"
ORDER_SELECT = "/cds-services/tarlatamab-order-select"
RANK = {"info": 0, "warning": 1, "critical": 2}
LABS = "2026-11-20T07:30:00Z"


def post(client: Any, url: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    response = client.post(url, json=body)
    assert response.status_code == 200, response.data
    assert_valid_response(response.json)
    return response.json["cards"]


def c2d1_history() -> list[dict[str, Any]]:
    return [
        administration("2026-10-24T09:00:00Z", 1, aid="adm-c1d1"),
        administration("2026-10-31T09:00:00Z", 10, aid="adm-c1d8"),
        administration("2026-11-07T09:00:00Z", 10, aid="adm-c1d15"),
        platinum_administration("2026-03-02T10:00:00Z"),
    ]


# --- assembly (unit) -----------------------------------------------------------------------------------
def test_every_catalogue_rule_is_classified(protocol: Protocol) -> None:
    """The lead classifies each new rule (hold, problem or plan) in the catalogue when adding it."""
    unclassified = [r.id for r in protocol.rules.values() if r.role is None]
    assert not unclassified, f"rules without a role in the catalogue: {unclassified}"
    permanent = {r.id for r in protocol.rules.values() if r.permanent}
    assert "crs.grade4" in permanent and "lab-hold.hys-law" in permanent and "crs.active" not in permanent


def test_a_held_order_is_one_card_led_by_a_permanent_discontinuation(protocol: Protocol) -> None:
    delete = (SuggestionSpec("delete-order", "o1"),)
    findings = [
        Finding("dose.invalid-amount", "o1", suggestions=(SuggestionSpec("update-dose", "o1", {"dose_mg": 10}),)),
        Finding("lab-hold.anc", "o1", suggestions=delete),
        Finding("crs.grade4", "o1", suggestions=delete),
        Finding("monitoring.schedule", "o1"),
        Finding("administration.infusion", "o1"),
        Finding("infection.active", "o1"),
        Finding("schedule.too-early", "o2"),
        Finding("monitoring.schedule", "o2"),
        Finding("data-quality.unusable"),
    ]
    plans = assemble(findings, protocol, "order-sign")
    assert [(p.kind, p.order_id, [f.rule_id for f in p.findings]) for p in plans] == [
        ("held", "o1", ["crs.grade4", "lab-hold.anc"]),
        ("single", "o2", ["schedule.too-early"]),  # the other order is judged on its own
        ("plan", "o2", ["monitoring.schedule"]),
        ("single", None, ["data-quality.unusable"]),
    ]
    # The plan lines are dropped for the held order; its dose problem and the infection are listed in its card
    # (without the dose button: its one suggestion deletes the order), so an overridden hold still shows them.
    assert [f.rule_id for f in plans[0].also] == ["dose.invalid-amount", "infection.active"]


def test_plan_card_at_order_select_only_when_escalated(protocol: Protocol) -> None:
    plain = [Finding("monitoring.schedule", "o1"), Finding("administration.infusion", "o1")]
    assert [p.kind for p in assemble(plain, protocol, "order-sign")] == ["plan"]
    assert assemble(plain, protocol, "order-select") == []
    escalated = [Finding("monitoring.escalated", "o1"), Finding("administration.infusion", "o1")]
    assert [p.kind for p in assemble(escalated, protocol, "order-select")] == ["plan"]


def test_an_unclassified_rule_is_never_hidden_in_the_plan(protocol: Protocol) -> None:
    """A rule added without a role: a finding that deletes the order is a hold, anything else a problem."""
    rules = {**protocol.rules, "infection.active": replace(protocol.rules["infection.active"], role=None)}
    unclassified = replace(protocol, rules=rules)
    assert role_of(Finding("infection.active", "o1"), unclassified) == "problem"
    deleting = Finding("infection.active", "o1", suggestions=(SuggestionSpec("delete-order", "o1"),))
    assert role_of(deleting, unclassified) == "hold"


# --- through the endpoint -------------------------------------------------------------------------------
def test_held_order_beside_a_good_order_each_judged_on_its_own(client: Any) -> None:
    """C2D1 today with ANC 0.6 is held; a C2D15 order two weeks later is not held by today's ANC (outside its
    3-day lab window): it gets its own labs card and its plan card."""
    observations = [*normal_labs(LABS), lab("anc", 0.6, "2026-11-20T09:00:00Z", oid="anc-low")]
    drafts = [
        tarlatamab_order("2026-11-21T10:00:00Z", 10, oid="order-c2d1"),
        tarlatamab_order("2026-12-05T10:00:00Z", 10, oid="order-c2d15"),
    ]
    body = hook_request(
        drafts=drafts, administrations=c2d1_history(), observations=observations, conditions=[sclc_condition()]
    )
    cards = post(client, ORDER_SIGN, body)

    got = sorted((c["source"]["topic"]["code"], c["indicator"]) for c in cards)
    assert got == [("lab-hold", "critical"), ("labs-missing", "warning"), ("monitoring", "info")]
    (held,) = [c for c in cards if c["indicator"] == "critical"]
    assert held["indicator"] == "critical" and held["source"]["topic"]["code"] == "lab-hold"
    assert held["summary"].startswith("Withhold tarlatamab: ANC 0.6 ×10⁹/L on 2026-11-20")
    assert [a["type"] for s in held["suggestions"] for a in s["actions"]] == ["delete"]
    assert held["source"]["url"] == "http://localhost/protocol#rule-lab-hold.anc"
    assert held["suggestions"][0]["actions"][0]["resourceId"] == "MedicationRequest/order-c2d1"
    (plan,) = [c for c in cards if c["source"]["topic"]["code"] == "monitoring"]
    assert plan["summary"].startswith("C2D15 plan")
    (labs,) = [c for c in cards if c["source"]["topic"]["code"] == "labs-missing"]
    assert "2026-12-05" in labs["summary"]


def test_a_held_order_never_gets_dose_or_plan_advice(client: Any) -> None:
    """The issue's five cards for one order (ANC 0.6 and a 7 mg dose): now one critical card, no 'change the
    dose' beside 'cancel the order'."""
    body = hook_request(
        drafts=[tarlatamab_order("2026-11-21T10:00:00Z", 7, oid="order-7mg")],
        administrations=c2d1_history(),
        observations=[*normal_labs(LABS), lab("anc", 0.6, "2026-11-20T09:00:00Z", oid="anc-low")],
        conditions=[sclc_condition()],
    )
    (card,) = post(client, ORDER_SIGN, body)
    assert card["indicator"] == "critical"
    # No plan advice; the wrong dose is named only as what to correct if the hold is overridden (no button).
    assert "60 min" not in card["detail"]
    before, _, after = card["detail"].partition("If the hold is overridden")
    assert "Change dose" not in before and "Change dose to 10 mg: 7 mg is not a tarlatamab dose" in after
    (suggestion,) = card["suggestions"]
    assert suggestion["actions"] == [
        {"type": "delete", "description": suggestion["label"], "resourceId": "MedicationRequest/order-7mg"}
    ]
    assert {r["code"] for r in card["overrideReasons"]} >= {"clinician-reviewed", "data-outdated"}


def _select_version(body: dict[str, Any]) -> dict[str, Any]:
    select = copy.deepcopy(body)
    select["hook"] = "order-select"
    drafts = [e["resource"] for e in select["context"]["draftOrders"]["entry"]]
    select["context"]["selections"] = [
        f"MedicationRequest/{d['id']}" for d in drafts if "tarlatamab" in json.dumps(d).lower()
    ]
    return select


@pytest.mark.parametrize("path", sorted((FIXTURES / "requests").glob("*.json")), ids=lambda p: p.stem)
def test_order_select_is_never_louder_than_order_sign(client: Any, path: Any) -> None:
    body = json.loads(path.read_text(encoding="utf-8"))
    if body["hook"] == "patient-view":
        pytest.skip("patient-view has no order-select counterpart")
    sign = post(client, ORDER_SIGN, {**body, "hook": "order-sign"})
    select = post(client, ORDER_SELECT, _select_version(body))
    assert len(select) <= len(sign)
    loudest = max((RANK[c["indicator"]] for c in sign), default=-1)
    assert all(RANK[c["indicator"]] <= loudest for c in select)
    sign_topics = [c["source"]["topic"]["code"] for c in sign]
    assert all(c["source"]["topic"]["code"] in sign_topics for c in select)


def test_premedication_and_hydration_already_ordered_are_plan_lines(client: Any) -> None:
    def c1d1(dexamethasone_mg: float) -> dict[str, Any]:
        return hook_request(
            drafts=[
                tarlatamab_order("2026-11-21T10:00:00Z", 1),
                dexamethasone_order("2026-11-21T09:00:00Z", dose=dexamethasone_mg),
                saline_order("2026-11-21T11:00:00Z"),
            ],
            administrations=[platinum_administration("2026-03-02T10:00:00Z")],
            observations=normal_labs(LABS),
            conditions=[sclc_condition()],
        )

    (plan,) = post(client, ORDER_SIGN, c1d1(8))
    assert "premedication.ordered" in plan["detail"] and "hydration.ordered" in plan["detail"]
    assert "Premedication ordered: **dexamethasone 8 mg IV**" in plan["detail"]
    # A wrong amount is a problem card of its own, not a plan line; the hydration stays in the plan.
    cards = {c["source"]["topic"]["code"]: c for c in post(client, ORDER_SIGN, c1d1(4))}
    assert sorted(cards) == ["monitoring", "premedication"]
    assert "premedication.ordered" not in cards["monitoring"]["detail"]
    assert "hydration.ordered" in cards["monitoring"]["detail"]
    assert cards["premedication"]["source"]["url"].endswith("#rule-premedication.dexamethasone-dose")


# --- escaping ----------------------------------------------------------------------------------------
MARKDOWN = (
    "[Dose approved](https://evil.example/x) ![px](https://evil.example/p.png) <img src=x onerror=alert(1)> "
    "<script>alert(1)</script> *em* __strong__ `code` www.evil.example &amp; | a | b |"
)
HEADING = "# Dose approved by pharmacy"


def _html(detail: str) -> str:
    return MarkdownIt("commonmark", {"html": True}).render(detail)


def _assert_inert(card: dict[str, Any]) -> None:
    rendered = _html(card["detail"])
    for tag in ("<a ", "<img", "<script", "<h1", "<h2", "<h3", "<em>em", "<strong>strong", "<code>code"):
        assert tag not in rendered, f"{tag} in {rendered}"
    assert "https://evil.example" not in card["detail"]  # no bare autolink either
    # The summary is plain text: nothing an EHR rendering it as HTML would take for a tag ("<0.1" may stay).
    assert not re.search(r"<[A-Za-z/!?]", card["summary"]), card["summary"]


def test_markdown_in_every_echoed_record_field_is_escaped(client: Any) -> None:
    """Markdown planted in a lab's unit and text, a condition's text, a medication's dose unit and text, an
    Observation id and a data-quality message; every card that echoes them renders them as plain text."""
    bad_unit = lab("anc", 3.1, LABS, oid="anc-md")
    bad_unit["valueQuantity"]["unit"] = bad_unit["valueQuantity"]["code"] = MARKDOWN
    bad_unit["code"]["text"] = HEADING
    bad_id = lab("platelets", 210, LABS)
    bad_id["id"] = "plt*[x](https://evil.example)"
    infection = condition(
        "http://hl7.org/fhir/sid/icd-10-cm", "J18.9", "Pneumonia", "2026-11-18", text=HEADING + " " + MARKDOWN
    )
    dexamethasone = dexamethasone_order("2026-11-21T09:00:00Z")
    dexamethasone["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]["unit"] = MARKDOWN
    del dexamethasone["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]["code"]
    dexamethasone["medicationCodeableConcept"]["text"] = "dexamethasone " + MARKDOWN
    dexamethasone["id"] = "dexa_[x](https://evil.example/id)"
    tarla = tarlatamab_order("2026-11-21T10:00:00Z", 10, unit="{pill}", oid="order-md")
    tarla["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]["unit"] = HEADING + " " + MARKDOWN
    del tarla["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]["code"]
    body = hook_request(
        drafts=[tarla, dexamethasone, saline_order("2026-11-21T11:00:00Z")],
        administrations=[administration("2026-11-14T09:00:00Z", 1, aid="adm-c1d1")],
        observations=[*[o for o in normal_labs(LABS) if "26499-4" not in json.dumps(o)], bad_unit, bad_id],
        conditions=[sclc_condition(), infection],
    )
    cards = post(client, ORDER_SIGN, body)
    text = json.dumps(cards, ensure_ascii=False)
    # The planted text reached the cards (so the check below means something) ...
    assert "Dose approved by pharmacy" in text and "evil" in text
    topics = {c["source"]["topic"]["code"]: c for c in cards}
    assert {"infection", "dose", "premedication", "data-quality", "monitoring"} <= set(topics), topics
    assert "Dose approved by pharmacy" in topics["dose"]["detail"]  # the tarlatamab dose unit
    assert "evil.example/x" in topics["premedication"]["detail"]  # the dexamethasone dose unit
    assert "evil.example/id" in topics["premedication"]["detail"]  # the dexamethasone order's id
    assert "Dose approved by pharmacy" in topics["infection"]["detail"]  # the condition text
    assert "Observation/plt" in topics["data-quality"]["detail"]  # an id that is not a FHIR id
    # ... and renders as text, not as a link, image, heading, emphasis or HTML.
    for card in cards:
        _assert_inert(card)


def test_a_huge_record_string_makes_a_small_card(client: Any) -> None:
    huge = "Pneumonia " + "A" * 4_000_000
    infection = condition("http://hl7.org/fhir/sid/icd-10-cm", "J18.9", "Pneumonia", "2026-11-18", text=huge)
    body = hook_request(
        drafts=[tarlatamab_order("2026-11-21T10:00:00Z", 10)],
        administrations=c2d1_history(),
        observations=normal_labs(LABS),
        conditions=[sclc_condition(), infection],
    )
    response = client.post(ORDER_SIGN, json=body)
    assert response.status_code == 200
    assert len(response.data) < 60_000
    (card,) = [c for c in response.json["cards"] if c["source"]["topic"]["code"] == "infection"]
    assert "Pneumonia AAAA" in card["detail"] and "…" in card["detail"]


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("0.6 10*3/uL", "0.6 ×10³/µL"),
        ("0.6 x10^9/L", "0.6 ×10⁹/L"),
        ("1 {pill}", "1 pill"),
        ("51 umol/L", "51 µmol/L"),
        ("25 mL/min/{1.73_m2}", "25 mL/min/1.73 m²"),
        ("3.2 x ULN", "3.2 × ULN"),
        ("12 m[IU]/mL", "12 mIU/mL"),
        ("2026-11-20", "2026-11-20"),
        ("0.8", "0.8"),
        ("- item", "\\- item"),
        ("1. item", "1\\. item"),
        ("a\nb\r\n# c", "a b \\# c"),
        ("see https://x.example", "see https\\://x.example"),
        (1.0, "1"),
        (2.50, "2.5"),
    ],
)
def test_safe_value(raw: object, shown: str) -> None:
    assert safe_value(raw) == shown


def test_every_fixture_card_links_to_its_rule_on_the_protocol_page(client: Any) -> None:
    page = client.get("/protocol").get_data(as_text=True)
    anchors = set(re.findall(r'id="(rule-[^"]+)"', page))
    for path in sorted((FIXTURES / "requests").glob("*.json")):
        body = json.loads(path.read_text(encoding="utf-8"))
        service = {"order-sign": ORDER_SIGN, "order-select": ORDER_SELECT}.get(body["hook"])
        cards = post(client, service or "/cds-services/tarlatamab-patient-view", body)
        for card in cards:
            anchor = card["source"]["url"].split("#", 1)[1]
            assert anchor in anchors, (path.name, anchor)
            assert card["links"][0]["url"].startswith("https://www.accessdata.fda.gov/")


def test_source_url_follows_the_public_base_url(make_app: Any) -> None:
    app = make_app(public_base_url="https://cds.example.org/tarlatamab")
    body = hook_request(
        drafts=[tarlatamab_order("2026-11-21T10:00:00Z", 10)],
        patient_resource=patient(gender="male"),
        administrations=c2d1_history(),
        observations=normal_labs(LABS),
        conditions=[sclc_condition()],
    )
    with app.test_client() as c:
        (card,) = post(c, ORDER_SIGN, body)
    assert card["source"]["url"] == "https://cds.example.org/tarlatamab/protocol#rule-monitoring.schedule"


@pytest.mark.parametrize("hook", ["order-sign", "order-select"])
def test_escalated_monitoring_makes_the_plan_card_a_warning_in_both_hooks(client: Any, hook: str) -> None:
    """Grade 2 CRS (resolved) after the last dose: C3D1 needs 22-24 h instead of 3-4 h. The plan card is a
    warning, shown while composing too, and still the order's only card."""
    from fhir_builders import crs_condition
    from test_compliant_orders import compliant_request

    body = compliant_request("C3D1", hook)
    body["prefetch"]["conditions"]["entry"].append(
        {"resource": crs_condition(2, "2026-11-08T20:00:00Z", abatement="2026-11-10T08:00:00Z", cid="crs-g2")}
    )
    (plan,) = post(client, ORDER_SIGN if hook == "order-sign" else ORDER_SELECT, body)
    assert plan["indicator"] == "warning" and plan["source"]["topic"]["code"] == "monitoring"
    assert plan["source"]["url"].endswith("#rule-monitoring.escalated")
    assert "extended 22-24 h monitoring after Grade 2" in plan["summary"]
    assert "instead of the observation for 3-4 hours" in plan["detail"] and "250 mL/h" in plan["detail"]
    assert plan["overrideReasons"]


@pytest.mark.parametrize(
    "raw",
    [
        "2026-11-20",
        "MedicationRequest/pt-1-tarla-order-C1D1",
        "Infusion rate and duration on the order",
        "0.6 10*9/L",
        "0.6 10 ^ 3 / mm3",
        "12 K/uL",
        "140 meq/L",
        "5 ug/dL",
        "3xULN",
        "eGFR 25 mL/min/1.73m2",
        "1 [IU]/L",
        "a  b",
        "\ttabbed\t",
        " padded ",
        "zero\u200bwidth",
        "caf\u0065\u0301",
        "www.example.org",
        "WWW.EXAMPLE.ORG",
        "data:text/html",
        "+ plus",
        "= equals",
        "12) item",
        "<b>bold</b> & *em* _u_ `c` | ~ $ ! #",
        "x" * 900,
        "word " * 200,
    ],
)
def test_safe_value_fast_paths_match_the_full_transformation(raw: str) -> None:
    """Plain ASCII text skips normalising, unit patterns without their literal and escapes with nothing to
    escape: the result is the one of applying every step to every value."""
    import unicodedata

    from cds_service import card_text as ct

    text = ct._SPACE.sub(" ", ct._CONTROL.sub("", unicodedata.normalize("NFC", raw[:800]))).strip()
    if len(text) > 200:
        text = text[:199].rstrip() + "…"
    for _, pattern, replacement in ct._UNIT_REWRITES:
        text = pattern.sub(replacement, text)
    text = ct._MARKDOWN_SPECIAL.sub(r"\\\1", text)
    text = ct._BARE_LINK.sub(lambda m: f"{m.group(1) or m.group(3)}\\{m.group(2) or m.group(4)}", text)
    text = ct._BLOCK_START.sub(lambda m: m.group(1)[:-1] + "\\" + m.group(1)[-1], text)
    assert safe_value(raw) == text
