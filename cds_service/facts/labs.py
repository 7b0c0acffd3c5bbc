"""Laboratory results (clinical specification sections 8 and 12): where an ANC, a liver test, ... is read.

Results are read through `reading.observations` (status policy, panel components) and
`reading.quantities` (UCUM vs free-text units, comparators, the protocol's unit tables). A result that
cannot be interpreted is kept with a `problem` and reported as a `DataIssue`: never dropped, never read as
normal, and an older result is never used in its place without saying so.

Depth: most analytes are read from the newest result down to the newest usable **final** one (a preliminary
result is kept on the way: it may raise a finding). Liver tests are read in full back to the first dose:
a Grade 4 or Hy's-law result after the first dose discontinues whatever later results show (section 13.6).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import date, datetime
from typing import Any

from ..fhir_validation import first_problem
from ..protocol import Protocol
from ..reading import observations as obs_reading
from ..reading.codes import codings, concept_text
from ..reading.dates import When, event_sort_key
from ..reading.identity import record_id, reference_of
from ..reading.quantities import convert
from ..units import analyte_label
from ..value_types import quick_init
from .model import DataIssue, LabResult

PREGNANCY_KEYS = ("pregnancy_status", "hcg_qualitative", "hcg_quantitative")
FULL_HISTORY_ANALYTES = frozenset({"alt", "ast", "bilirubin"})
# At most this many newest results of one analyte are validated / reported as unusable (keeps requests fast
# and data-quality cards readable); the rules read the newest usable result.
READ_DEPTH = 10
FULL_READ_DEPTH = 200
ISSUE_DEPTH = 3


def classify_observations(observations: Any, protocol: Protocol) -> dict[str, list[dict[str, Any]]]:
    """Observations by protocol analyte key (LOINC) or local kind (crs_grade, ice_score, ...)."""
    systems = protocol.section("systems")
    tables = {systems["loinc"]: protocol.analyte_by_loinc, systems["local"]: protocol.local_observation_kinds}
    return obs_reading.classify(observations or (), tables)


def lab_analytes(protocol: Protocol) -> list[str]:
    units = protocol.section("units")
    return [a for a in protocol.section("observations") if a in units and a not in PREGNANCY_KEYS]


def convert_lab(protocol: Protocol, analyte: str, quantity: Any) -> Any:
    """A lab Quantity converted to the analyte's canonical unit (the one converter, `reading.quantities`)."""
    spec = protocol.section("units")[analyte]
    return convert(quantity, spec["factors"], str(spec["canonical"]))


@quick_init
@dataclass(frozen=True, slots=True)
class AnalyteReading:
    """What reading one analyte's results needs from the protocol, looked up once per analyte and request."""

    analyte: str
    factors: Mapping[str, Any]
    canonical: str
    uln_default: float | None
    uses_uln: bool  # a rule reads a ULN for this analyte (others have absolute thresholds)

    @classmethod
    def of(cls, analyte: str, protocol: Protocol) -> AnalyteReading:
        spec = protocol.section("units")[analyte]
        defaults = protocol.section("labs")["uln_defaults"]
        default = defaults.get(analyte)
        return cls(
            analyte=analyte,
            factors=spec["factors"],
            canonical=str(spec["canonical"]),
            uln_default=float(default) if default is not None else None,
            uses_uln=analyte in defaults,
        )


def _uln(obs: dict[str, Any], reading: AnalyteReading, quantity: Any) -> tuple[float | None, str]:
    if not reading.uses_uln:
        return None, "none"  # no rule reads a ULN for this analyte (thresholds are absolute)
    ranges = obs.get("referenceRange")
    for ref in ranges if ranges.__class__ is list else ():
        high = ref.get("high") if ref.__class__ is dict else None
        if high.__class__ is not dict or high.get("value") is None:
            continue
        if high.get("unit").__class__ is not str and high.get("code").__class__ is not str:
            # A range without a unit is written in the result's unit, as laboratories send it.
            value_units = quantity if quantity.__class__ is dict else {}
            high = {
                **high,
                "unit": value_units.get("unit"),
                "code": value_units.get("code"),
                "system": value_units.get("system"),
            }
        converted = convert(high, reading.factors, reading.canonical)
        if converted.value is not None and converted.comparator is None and converted.value > 0:
            return converted.value, "reference range"
    if reading.uln_default is not None:
        return reading.uln_default, "default"
    return None, "none"


def _absent_reason(obs: dict[str, Any]) -> str | None:
    reason = obs.get("dataAbsentReason")
    if reason is None:
        return None
    text = concept_text(reason) or next((c for _, c, _ in codings(reason) if c), "") or "no reason given"
    return f"no value (data absent: {text})"


def _has_other_value(obs: dict[str, Any]) -> bool:
    return any(key.startswith("value") and key != "valueQuantity" for key in obs)


def lab_result(obs: dict[str, Any], reading: AnalyteReading, when: When) -> LabResult:
    quantity = obs.get("valueQuantity")
    converted = convert(quantity, reading.factors, reading.canonical)
    problem = converted.problem
    if quantity is None:
        problem = _absent_reason(obs) or ("value is not a quantity" if _has_other_value(obs) else "no value")
    status = obs_reading.status_class(obs)
    if status == "malformed":
        problem = obs_reading.MALFORMED_STATUS
    uln, uln_source = _uln(obs, reading, quantity)
    return LabResult(
        analyte=reading.analyte,
        observation_id=record_id(obs),
        effective=when.moment,
        local_date=when.local_date,
        value=converted.value if problem is None else None,
        unit=reading.canonical,
        raw_value=converted.raw_value,
        raw_unit=converted.raw_unit,
        uln=uln,
        uln_source=uln_source,  # type: ignore[arg-type]
        problem=problem,
        comparator=converted.comparator if problem is None else None,
        preliminary=status == "preliminary",
        exact=when.exact,
    )


def future_issue(label: str, when: When, reference: str, dataset: str) -> DataIssue:
    """The warning for a record dated after the evaluation time (it is not used)."""
    shown = when.instant.isoformat() if when.instant is not None else when.local_date.isoformat()
    return DataIssue(
        "unusable",
        dataset,
        f"{label} record dated {shown}, after the time of this check: not used; check the record's date and time.",
        reference,
        affects=label,
    )


def _problem_element(result: LabResult, obs: dict[str, Any]) -> str:
    problem = result.problem or ""
    if problem == obs_reading.MALFORMED_STATUS:
        return obs_reading.element_path(obs, "status")
    if "data absent" in problem:
        element = "dataAbsentReason"
    elif "unit" in problem:
        element = "valueQuantity.code"
    elif "comparator" in problem:
        element = "valueQuantity.comparator"
    else:
        element = "valueQuantity.value" if "valueQuantity" in obs else "value[x]"
    return obs_reading.element_path(obs, element)


def _lab_issue(result: LabResult, element: str) -> DataIssue:
    label = analyte_label(result.analyte)
    return DataIssue(
        "unusable",
        "observations",
        f"{label} result of {result.local_date.isoformat()} ({result.display}): {result.problem}; not used.",
        f"Observation/{result.observation_id}",
        element,
        affects=label,
    )


def read_elements(analyte: str, protocol: Protocol) -> frozenset[str]:
    """The Observation elements read for an analyte: the reference range only where a ULN is used."""
    if analyte in protocol.section("labs")["uln_defaults"]:
        return obs_reading.READ_ELEMENTS
    return obs_reading.READ_ELEMENTS - {"referenceRange", "interpretation"}


def lab_series(
    observations: list[dict[str, Any]],
    analyte: str,
    protocol: Protocol,
    now: datetime,
    issues: list[DataIssue],
    treated_since: date | None = None,
    today: date | None = None,
) -> tuple[LabResult, ...]:
    """Results of one analyte, newest first, read down to the newest usable final result up to now.

    `today`: the site's local date (a date-only result is after the check only when dated after it).

    Liver tests are read further, back to the first tarlatamab dose (`treated_since`), for section 13.6.
    """
    dated: list[tuple[When, str, dict[str, Any]]] = []
    for obs in observations:
        when = obs_reading.observation_when(obs)
        if when is None:
            label = analyte_label(analyte)
            issues.append(
                DataIssue(
                    "unusable",
                    "observations",
                    f"{label} result without a readable date: not used.",
                    reference_of(obs),
                    obs_reading.element_path(obs, obs_reading.time_element(obs)),
                    affects=label,
                )
            )
            continue
        dated.append((when, record_id(obs), obs))
    by_event = event_sort_key(when for when, _, _ in dated)
    dated.sort(key=lambda item: (by_event(item[0]), item[1]), reverse=True)
    full = analyte in FULL_HISTORY_ANALYTES and treated_since is not None
    depth = FULL_READ_DEPTH if full else READ_DEPTH
    results: list[LabResult] = []
    elements_read = read_elements(analyte, protocol)
    reading = AnalyteReading.of(analyte, protocol)
    read = reported = future = 0
    settled = False
    for when, _, obs in dated:
        past = when.moment <= now
        if not past and future < ISSUE_DEPTH and when.after(now, today or now.date()):
            # A result "from the future" (a local time written as UTC, a clock ahead) is never read, so an older
            # one would decide in its place: say so.
            future += 1
            issues.append(future_issue(analyte_label(analyte), when, reference_of(obs), "observations"))
        if past:
            if read >= depth or (settled and not full):
                break
            if settled and treated_since is not None and when.local_date < treated_since:
                break  # before the first dose: only the newest result counts (13.16), already read
        result = lab_result(obs, reading, when)
        if past:
            read += 1
            element = None
            if result.problem is None and not settled:
                # (the view keys of a panel component, "_component", are never read by the check)
                invalid = first_problem(obs, elements_read)
                if invalid is not None:
                    element, message = invalid
                    result = replace(
                        result, value=None, comparator=None, problem=f"invalid FHIR Observation ({element}: {message})"
                    )
            if result.problem is None:
                results.append(result)
                settled = settled or not result.preliminary  # the newest final result: older ones not needed
                continue
            if reported < ISSUE_DEPTH and not settled:
                reported += 1
                issues.append(_lab_issue(result, element or _problem_element(result, obs)))
        results.append(result)
    return tuple(results)


def build_labs(
    grouped: dict[str, list[dict[str, Any]]],
    protocol: Protocol,
    now: datetime,
    issues: list[DataIssue],
    treated_since: date | None = None,
    today: date | None = None,
) -> dict[str, tuple[LabResult, ...]]:
    return {
        analyte: lab_series(grouped.get(analyte, []), analyte, protocol, now, issues, treated_since, today)
        for analyte in lab_analytes(protocol)
    }
