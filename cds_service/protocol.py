"""The protocol data file: loaded and checked once per worker, then read by facts, rules and cards."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

INDICATORS = ("info", "warning", "critical")
SOURCE_TAGS = ("L", "A", "B", "G", "P")
# How a rule's finding joins the card set of its order (cds_service/card_set.py): a `hold` withholds or
# discontinues the dose (one critical card per held order), a `problem` is its own card, a `plan` finding is a
# line of the order's one plan card. A rule without a role is classified by its finding (see card_set).
ROLES = ("hold", "problem", "plan")
TOPICS = (
    "dose",
    "schedule",
    "premedication",
    "hydration",
    "monitoring",
    "administration",
    "labs-missing",
    "lab-hold",
    "crs",
    "neurotoxicity",
    "pregnancy",
    "lactation",
    "eligibility",
    "organ-function",
    "infection",
    "data-quality",
    "summary",
)


class ProtocolError(ValueError):
    """The protocol file is missing, malformed or inconsistent."""


@dataclass(frozen=True)
class RuleDef:
    id: str
    section: str
    topic: str
    indicator: str
    sources: tuple[str, ...]
    citation: str
    indicator_order_select: str | None = None
    role: str | None = None  # hold | problem | plan (None: inferred from the finding, see card_set)
    permanent: bool = False  # a hold that permanently discontinues tarlatamab
    label: str | None = None  # FDA label section(s) the rule applies, e.g. "2.3, Table 4"

    def indicator_for(self, hook: str) -> str:
        if hook == "order-select" and self.indicator_order_select:
            return self.indicator_order_select
        return self.indicator

    @property
    def source_tags(self) -> str:
        return "".join(f"[{s}]" for s in self.sources)


LIVER_ANALYTES = ("alt", "ast", "bilirubin")


@dataclass(frozen=True)
class LiverLimits:
    """The liver thresholds of `labs.thresholds` in multiples of ULN, analyte (alt, ast, bilirubin) -> limit."""

    grade3: dict[str, float]
    grade4: dict[str, float]
    resume: dict[str, float]
    hys: dict[str, float]  # Hy's law: both a transaminase and bilirubin above their limits
    discontinuation_floor: dict[str, float]  # the lower of the Grade 4 and Hy's-law limits


def _liver_limits(thresholds: dict[str, Any]) -> LiverLimits:
    def by_analyte(transaminase_key: str, bilirubin_key: str) -> dict[str, float]:
        transaminase = float(thresholds[transaminase_key])
        return {"alt": transaminase, "ast": transaminase, "bilirubin": float(thresholds[bilirubin_key])}

    grade4 = by_analyte("transaminase_grade4_uln", "bilirubin_grade4_uln")
    hys = by_analyte("hys_transaminase_uln", "hys_bilirubin_uln")
    return LiverLimits(
        grade3=by_analyte("transaminase_grade3_uln", "bilirubin_grade3_uln"),
        grade4=grade4,
        resume=by_analyte("resume_transaminase_uln", "resume_bilirubin_uln"),
        hys=hys,
        discontinuation_floor={a: min(grade4[a], hys[a]) for a in LIVER_ANALYTES},
    )


@dataclass(frozen=True)
class Protocol:
    data: dict[str, Any]
    rules: dict[str, RuleDef]
    path: Path | None = field(default=None, compare=False)

    @property
    def version(self) -> str:
        return str(self.data["protocol"]["version"])

    @property
    def id(self) -> str:
        return str(self.data["protocol"]["id"])

    def section(self, name: str) -> dict[str, Any]:
        return self.data[name]

    def rule(self, rule_id: str) -> RuleDef:
        try:
            return self.rules[rule_id]
        except KeyError as exc:
            raise ProtocolError(f"rule {rule_id!r} is not in the protocol file") from exc

    # Lookups precomputed once for the request path ------------------------------------------------
    @cached_property
    def rule_rank(self) -> dict[str, int]:
        """Rule id -> its position in the protocol file (the order cards list findings in)."""
        return {rule_id: i for i, rule_id in enumerate(self.rules)}

    @cached_property
    def analyte_by_loinc(self) -> dict[str, str]:
        """LOINC code -> analyte key (anc, hemoglobin, ..., pregnancy_status, breastfeeding)."""
        out: dict[str, str] = {}
        for analyte, codes in self.data["observations"].items():
            for code in codes:
                out[str(code)] = analyte
        return out

    @cached_property
    def liver_limits(self) -> LiverLimits:
        return _liver_limits(self.data["labs"]["thresholds"])

    @cached_property
    def local_observation_kinds(self) -> dict[str, str]:
        """urn:tarlatamab-cds code -> kind (crs_grade, icans_grade, neurotox_grade, ice_score)."""
        return {str(v): k for k, v in self.data["local_observation_codes"].items()}

    @cached_property
    def _medication_codes(self) -> dict[str, tuple[frozenset[str], frozenset[str], tuple[str, ...]]]:
        return {
            name: (
                frozenset(str(c) for c in med.get("rxnorm", []) or []),
                frozenset(str(c) for c in med.get("ndc", []) or []),
                tuple(str(t).lower() for t in med.get("text", []) or []),
            )
            for name, med in self.data["medications"].items()
        }

    @cached_property
    def medication_code_index(self) -> dict[tuple[str, str], frozenset[str]]:
        """(system, code) -> the medication concepts that code means (RxNorm and NDC, NDC also without dashes)."""
        systems = self.data["systems"]
        index: dict[tuple[str, str], set[str]] = {}
        for name, (rxnorm, ndc, _) in self._medication_codes.items():
            for code in rxnorm:
                index.setdefault((systems["rxnorm"], code), set()).add(name)
            for code in ndc:
                index.setdefault((systems["ndc"], code), set()).add(name)
                index.setdefault((systems["ndc"], code.replace("-", "")), set()).add(name)
        return {key: frozenset(names) for key, names in index.items()}

    @cached_property
    def medication_ndc_products(self) -> dict[str, frozenset[str]]:
        """9-digit NDC product code -> the medication concepts it means (every NDC form reduces to it)."""
        from .reading.codes import ndc_products

        index: dict[str, set[str]] = {}
        for name, (_, ndc, _) in self._medication_codes.items():
            for code in ndc:
                for product in ndc_products(code):
                    index.setdefault(product, set()).add(name)
        return {key: frozenset(names) for key, names in index.items()}

    @cached_property
    def medication_text_pattern(self) -> tuple[re.Pattern[str] | None, dict[str, frozenset[str]]]:
        """One pattern finding any medication text fragment, and fragment -> the concepts it names."""
        names: dict[str, set[str]] = {}
        for name, (_, _, texts) in self._medication_codes.items():
            for text in texts:
                names.setdefault(text, set()).add(name)
        if not names:
            return None, {}
        pattern = re.compile("|".join(re.escape(t) for t in sorted(names, key=len, reverse=True)))
        return pattern, {t: frozenset(n) for t, n in names.items()}


def load_protocol(path: Path) -> Protocol:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ProtocolError(f"protocol file not found: {path}") from exc
    except yaml.YAMLError as exc:
        raise ProtocolError(f"protocol file {path} is not valid YAML: {exc}") from exc
    return parse_protocol(raw, path)


def parse_protocol(raw: Any, path: Path | None = None) -> Protocol:
    if not isinstance(raw, dict):
        raise ProtocolError("protocol file must hold a mapping")
    required = (
        "protocol",
        "doses",
        "schedule",
        "administration",
        "premedication",
        "monitoring",
        "toxicity",
        "labs",
        "units",
        "populations",
        "systems",
        "medications",
        "observations",
        "answers",
        "local_observation_codes",
        "conditions",
        "orderables",
        "rules",
    )
    missing = [k for k in required if k not in raw]
    if missing:
        raise ProtocolError(f"protocol file lacks sections: {', '.join(missing)}")
    if raw["doses"].get("step_up_mg") != 1 or raw["doses"].get("target_mg") != 10:
        # Only 1 mg and 10 mg exist [L]; a file that says otherwise is refused rather than obeyed.
        raise ProtocolError("doses.step_up_mg must be 1 and doses.target_mg must be 10 (label: no other doses)")
    rules: dict[str, RuleDef] = {}
    for entry in raw["rules"]:
        try:
            rule = RuleDef(
                id=str(entry["id"]),
                section=str(entry["section"]),
                topic=str(entry["topic"]),
                indicator=str(entry["indicator"]),
                sources=tuple(str(s) for s in entry["sources"]),
                citation=str(entry["citation"]).strip(),
                indicator_order_select=entry.get("indicator_order_select"),
                role=entry.get("role"),
                permanent=bool(entry.get("permanent", False)),
                label=None if entry.get("label") is None else str(entry["label"]),
            )
        except (KeyError, TypeError) as exc:
            raise ProtocolError(f"rule entry {entry!r} lacks {exc}") from exc
        if rule.id in rules:
            raise ProtocolError(f"rule id {rule.id} appears twice")
        if rule.topic not in TOPICS:
            raise ProtocolError(f"rule {rule.id}: unknown topic {rule.topic!r}")
        for ind in (rule.indicator, rule.indicator_order_select):
            if ind is not None and ind not in INDICATORS:
                raise ProtocolError(f"rule {rule.id}: unknown indicator {ind!r}")
        if rule.role is not None and rule.role not in ROLES:
            raise ProtocolError(f"rule {rule.id}: role must be one of {ROLES}")
        if rule.permanent and rule.role != "hold":
            raise ProtocolError(f"rule {rule.id}: only a hold can be permanent")
        bad_tags = [s for s in rule.sources if s not in SOURCE_TAGS]
        if bad_tags or not rule.sources:
            raise ProtocolError(f"rule {rule.id}: source tags must be among {SOURCE_TAGS}")
        rules[rule.id] = rule
    for analyte, spec in raw["units"].items():
        if spec.get("canonical") not in spec.get("factors", {}):
            raise ProtocolError(f"units.{analyte}: canonical unit must be one of its factors")
    return Protocol(data=raw, rules=rules, path=path)
