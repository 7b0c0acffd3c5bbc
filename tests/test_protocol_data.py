"""The protocol data file, the card wording and the generated pharmacist document stay consistent."""

from __future__ import annotations

import copy
import io
import re
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import yaml

from cds_service.cards import CardRenderer, CardTextError, check_templates, fill, load_card_texts
from cds_service.cli import main
from cds_service.findings import Finding
from cds_service.protocol import Protocol, ProtocolError, parse_protocol
from cds_service.protocol_doc import pharmacist_document
from cds_service.settings import REPO_ROOT
from cds_service.suggestions import SuggestionBuilder

PROTOCOL_FILE = REPO_ROOT / "protocol" / "tarlatamab.yaml"
TESTS = Path(__file__).resolve().parent


def _raw() -> dict:
    return yaml.safe_load(PROTOCOL_FILE.read_text(encoding="utf-8"))


def test_every_rule_has_card_wording_and_every_wording_a_rule(protocol: Protocol) -> None:
    texts = load_card_texts(REPO_ROOT / "cards")
    check_templates(texts, protocol)  # raises on any mismatch
    assert set(texts.rules) == set(protocol.rules)


def test_pharmacist_document_is_generated_from_the_protocol_file(protocol: Protocol) -> None:
    committed = (REPO_ROOT / "docs" / "protocol-rules.md").read_text(encoding="utf-8")
    assert committed == pharmacist_document(protocol), (
        "docs/protocol-rules.md is stale: run `cds-service protocol --markdown > docs/protocol-rules.md`"
    )


def test_document_lists_every_rule_with_its_sources(protocol: Protocol) -> None:
    doc = pharmacist_document(protocol)
    for rule in protocol.rules.values():
        assert f"`{rule.id}`" in doc
        assert rule.source_tags in doc


def test_protocol_cli_prints_the_rule_catalogue(protocol: Protocol) -> None:
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["protocol"]) == 0
    text = out.getvalue()
    for rule in protocol.rules.values():
        assert re.search(rf"^{re.escape(rule.id)}\s+{rule.topic}\s+{rule.indicator}", text, re.M), rule.id


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("doses", "step_up_mg"), 2, "step_up_mg must be 1"),
        (("doses", "target_mg"), 5, "target_mg must be 10"),
    ],
)
def test_a_protocol_file_with_other_doses_is_refused(path: tuple[str, str], value: int, message: str) -> None:
    raw = _raw()
    raw[path[0]][path[1]] = value
    with pytest.raises(ProtocolError, match=message):
        parse_protocol(raw)


def test_rule_catalogue_checks_topics_indicators_and_sources() -> None:
    for field, bad, message in (
        ("topic", "dosing", "unknown topic"),
        ("indicator", "hard-stop", "unknown indicator"),
        ("sources", ["X"], "source tags"),
    ):
        raw = _raw()
        raw["rules"][0][field] = bad
        with pytest.raises(ProtocolError, match=message):
            parse_protocol(raw)
    raw = _raw()
    raw["rules"].append(copy.deepcopy(raw["rules"][0]))
    with pytest.raises(ProtocolError, match="twice"):
        parse_protocol(raw)
    for field, bad, message in (("role", "gatekeeper", "role must be one of"), ("permanent", True, "only a hold")):
        raw = _raw()
        raw["rules"][0][field] = bad  # the first rule is a problem (dose)
        with pytest.raises(ProtocolError, match=message):
            parse_protocol(raw)


def test_every_protocol_number_a_card_template_names_exists(protocol: Protocol) -> None:
    """`{p[section][key]}` in any summary, detail or plan line (variants included) resolves, and every plan
    rule has a plan line to contribute to the plan card."""
    import string

    from cds_service.card_text import TemplateData

    texts = load_card_texts(REPO_ROOT / "cards")
    data = TemplateData(protocol.data)
    for rule_id, entry in texts.rules.items():
        versions = [entry, *entry.get("variants", {}).values()]
        for version in versions:
            for key in ("summary", "detail", "plan"):
                for _, field, _, _ in string.Formatter().parse(str(version.get(key, ""))):
                    if field and field.startswith("p["):
                        value: object = data
                        for part in field[2:-1].split("]["):
                            value = value[part]  # type: ignore[index]
                        assert isinstance(value, (int, float, str)), (rule_id, field)
        if protocol.rule(rule_id).role == "plan":
            assert all("plan" in v or "plan" in entry for v in versions), f"{rule_id} has no plan line"


def test_every_unit_table_contains_its_canonical_unit() -> None:
    raw = _raw()
    raw["units"]["anc"]["canonical"] = "cells/L"
    with pytest.raises(ProtocolError, match="canonical"):
        parse_protocol(raw)


def test_every_rule_is_exercised_by_some_test(protocol: Protocol) -> None:
    """Each rule id appears in a test other than this file, so breaking any rule can fail a test."""
    sources = "\n".join(p.read_text(encoding="utf-8") for p in TESTS.glob("test_*.py") if p.name != Path(__file__).name)
    untested = [rule_id for rule_id in protocol.rules if f'"{rule_id}"' not in sources]
    assert not untested, f"rules with no test naming them: {untested}"


def test_templates_fail_loudly_on_unknown_values() -> None:
    with pytest.raises(CardTextError, match="grade"):
        fill("Grade {grade} CRS", {})
    assert fill("{p[doses][target_mg]} mg", {"p": {"doses": {"target_mg": 10}}}) == "10 mg"


def test_rendered_summary_is_cut_below_140_characters(protocol: Protocol) -> None:
    texts = load_card_texts(REPO_ROOT / "cards")
    renderer = CardRenderer(protocol, texts)
    builder = SuggestionBuilder(protocol, patient_id="p", hook_instance="h", draft_orders={})
    finding = Finding(rule_id="infection.active", values={"conditions": "pneumonia " * 30})  # a long list of conditions
    [(rule_id, card)] = renderer.render([finding], hook="order-sign", hook_instance="h", suggestion_builder=builder)
    assert rule_id == "infection.active"
    assert len(card["summary"]) <= 139
    assert card["summary"].endswith("…")


def test_card_uuids_are_stable_for_a_request_and_differ_between_requests(protocol: Protocol) -> None:
    renderer = CardRenderer(protocol, load_card_texts(REPO_ROOT / "cards"))
    builder = SuggestionBuilder(protocol, patient_id="p", hook_instance="h", draft_orders={})
    finding = Finding(rule_id="infection.active", values={"conditions": "pneumonia"})
    first = renderer.render([finding], hook="order-sign", hook_instance="a", suggestion_builder=builder)
    again = renderer.render([finding], hook="order-sign", hook_instance="a", suggestion_builder=builder)
    other = renderer.render([finding], hook="order-sign", hook_instance="b", suggestion_builder=builder)
    assert first[0][1]["uuid"] == again[0][1]["uuid"]
    assert first[0][1]["uuid"] != other[0][1]["uuid"]


def test_card_names_rule_source_and_protocol_version(protocol: Protocol) -> None:
    renderer = CardRenderer(protocol, load_card_texts(REPO_ROOT / "cards"))
    builder = SuggestionBuilder(protocol, patient_id="p", hook_instance="h", draft_orders={})
    finding = Finding(rule_id="infection.active", values={"conditions": "pneumonia"})
    [(_, card)] = renderer.render([finding], hook="order-sign", hook_instance="h", suggestion_builder=builder)
    # The source a clinician can follow: the institutional protocol version and rule (infection is the site's
    # decision, not a label section), and the rule's anchor on the protocol page.
    assert f"institutional protocol v{protocol.version}, rule infection.active" in card["detail"]
    assert card["source"]["url"] == "http://localhost/protocol#rule-infection.active"
    assert "infection.active" in card["source"]["label"]
    assert card["source"]["topic"] == {
        "system": "urn:tarlatamab-cds:card-topic",
        "code": "infection",
        "display": "infection",
    }
    assert card["indicator"] == protocol.rule("infection.active").indicator


def test_readme_shows_the_prefetch_templates_the_service_advertises(protocol: Protocol) -> None:
    from cds_service.services import prefetch_templates

    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    for key, template in prefetch_templates(protocol).items():
        assert f'"{key}": "{template}"' in readme, f"README prefetch template for {key} is stale"


def test_template_view_shows_what_template_data_shows(protocol: Protocol) -> None:
    from collections.abc import Mapping

    from cds_service.card_text import TemplateData, template_view

    def leaves(data: Mapping[str, object], path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
        out = []
        for key, value in data.items():
            out.extend(leaves(value, (*path, key)) if isinstance(value, Mapping) else [(*path, key)])
        return out

    view, data = template_view(protocol.data), TemplateData(protocol.data)
    for path in leaves(protocol.data):
        a: object = view
        b: object = data
        for key in path:
            a, b = a[key], b[key]  # type: ignore[index]
        assert a == b and type(a) is type(b), path
