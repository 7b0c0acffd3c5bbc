"""Structure checks of the prefetched resources the rules read (clinical specification section 12, validation scope).

The prefetched record is read, not re-emitted: what matters is that every element a rule reads has the JSON
shape and the FHIR R4 datatype it must have, so that the reading layer never sees a wrong shape. A small
declarative table per resource type names each element read and its datatype; `first_structure_problem`
walks only those elements (and, inside them, the datatype's own elements) and returns the first problem as
(location inside the resource, message), in the order of the R4 element definitions. Messages name what is
wrong, never the submitted value.

What is rejected where read: wrong JSON types (a string where an object or a number is expected, an object
where a list is expected, a number where a date is expected), null inside a list, empty strings, empty or
blank codes and ids, codes with stray whitespace, malformed or impossible date / dateTime / instant values (a
time without a time zone), non-integer integers, a `Quantity.comparator` other than <, <=, >=, >, elements
unknown to the datatype (a typo such as `valueQuantity.vaule` is never silently dropped), elements that are
not R4 at all (`Condition.abatementBoolean`), a missing `Observation.status` or `Observation.code`, and more
than one `effective[x]` or `value[x]` of an Observation. An element given as null (outside a list) counts as
absent, as fhir.resources reads it: the reading layer then reports what is missing.

The draft orders and the resources built for suggestions are validated with fhir.resources, not here.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Collection, Mapping
from datetime import date, datetime
from typing import Any

Loc = tuple[str | int, ...]
Problem = tuple[Loc, str]

# --- primitive datatypes --------------------------------------------------------------------------------

_CODE = re.compile(r"[^\s]+( [^\s]+)*")
_ID = re.compile(r"[A-Za-z0-9\-.]{1,255}")
_YEAR = r"([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)"
_TIME = r"T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?(Z|[+\-]((0[0-9]|1[0-3]):[0-5][0-9]|14:00))"
_DATE = re.compile(_YEAR + r"(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1]))?)?")
_DATETIME = re.compile(_YEAR + r"(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1])(" + _TIME + r")?)?)?")
_INSTANT = re.compile(_YEAR + r"-(0[1-9]|1[0-2])-(0[1-9]|[1-2][0-9]|3[0-1])" + _TIME)
COMPARATORS = frozenset({"<", "<=", ">=", ">"})


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return "an unsupported value"


def _string_like(value: Any, kind: str) -> str | None:
    if value.__class__ is not str:
        return f"Expected a string ({kind}), found {_json_type(value)}"
    if not value.strip():
        return f"An empty or blank string is not a valid {kind}"
    return None


def _string(value: Any) -> str | None:
    if value.__class__ is not str:
        return f"Expected a string, found {_json_type(value)}"
    return None if value else "An empty string is not a valid FHIR string"


def _code(value: Any) -> str | None:
    problem = _string_like(value, "code")
    if problem is None and not _CODE.fullmatch(value):
        return "Not a valid code (leading, trailing or repeated whitespace)"
    return problem


def _id(value: Any) -> str | None:
    problem = _string_like(value, "id")
    if problem is None and not _ID.fullmatch(value):
        return "Not a valid id (letters, digits, '-' and '.' only)"
    return problem


def _uri(value: Any) -> str | None:
    return None if value.__class__ is str else f"Expected a string (uri), found {_json_type(value)}"


def _boolean(value: Any) -> str | None:
    return None if value is True or value is False else f"Expected a boolean, found {_json_type(value)}"


def _integer(value: Any) -> str | None:
    if value.__class__ is int:
        return None if -2147483648 <= value <= 2147483647 else "The integer is out of the 32-bit range"
    if value.__class__ is float:
        return None if value.is_integer() else "Expected an integer, found a number with a fraction"
    return f"Expected an integer, found {_json_type(value)}"


def _decimal(value: Any) -> str | None:
    if value.__class__ is int or value.__class__ is float:
        return None
    return f"Expected a number (decimal), found {_json_type(value)}"


def _full_date_exists(text: str) -> bool:
    try:
        date(int(text[0:4]), int(text[5:7]), int(text[8:10]))
    except ValueError:
        return False
    return True


def _date(value: Any) -> str | None:
    problem = _string_like(value, "date")
    if problem is not None:
        return problem
    if not _DATE.fullmatch(value) or (len(value) == 10 and not _full_date_exists(value)):
        return "Not a valid FHIR date (YYYY, YYYY-MM or YYYY-MM-DD)"
    return None


def _moment_exists(text: str) -> bool:
    if not _full_date_exists(text):
        return False
    if len(text) > 10:
        try:
            datetime.fromisoformat(text.replace(":60", ":59", 1) if text[17:19] == "60" else text)
        except ValueError:
            return False
    return True


def _date_time(value: Any) -> str | None:
    problem = _string_like(value, "dateTime")
    if problem is not None:
        return problem
    if not _DATETIME.fullmatch(value) or (len(value) >= 10 and not _moment_exists(value)):
        return "Not a valid FHIR dateTime (YYYY, YYYY-MM, YYYY-MM-DD, or a date and time with a time zone)"
    return None


def _instant(value: Any) -> str | None:
    problem = _string_like(value, "instant")
    if problem is not None:
        return problem
    if not _INSTANT.fullmatch(value) or not _moment_exists(value):
        return "Not a valid FHIR instant (a date and time to the second, with a time zone)"
    return None


def _comparator(value: Any) -> str | None:
    problem = _code(value)
    if problem is None and value not in COMPARATORS:
        return "Not a valid Quantity.comparator (one of <, <=, >=, >)"
    return problem


def _not_r4(value: Any) -> str | None:
    return "Not an element of this FHIR R4 resource"


PRIMITIVES: dict[str, Callable[[Any], str | None]] = {
    "string": _string,
    "code": _code,
    "id": _id,
    "uri": _uri,
    "boolean": _boolean,
    "integer": _integer,
    "decimal": _decimal,
    "date": _date,
    "dateTime": _date_time,
    "instant": _instant,
    "comparator": _comparator,
    "not-r4": _not_r4,
}

# --- complex datatypes: element -> (datatype, is a list), in R4 element order -----------------------------

Table = dict[str, tuple[str, bool]]

_QUANTITY: Table = {
    "value": ("decimal", False),
    "comparator": ("comparator", False),
    "unit": ("string", False),
    "system": ("uri", False),
    "code": ("code", False),
}
COMPLEX: dict[str, Table] = {
    "Coding": {
        "system": ("uri", False),
        "version": ("string", False),
        "code": ("code", False),
        "display": ("string", False),
        "userSelected": ("boolean", False),
    },
    "CodeableConcept": {"coding": ("Coding", True), "text": ("string", False)},
    "Quantity": _QUANTITY,
    "Period": {"start": ("dateTime", False), "end": ("dateTime", False)},
    "Range": {"low": ("Quantity", False), "high": ("Quantity", False)},
    "Ratio": {"numerator": ("Quantity", False), "denominator": ("Quantity", False)},
    "Identifier": {
        "use": ("code", False),
        "type": ("CodeableConcept", False),
        "system": ("uri", False),
        "value": ("string", False),
        "period": ("Period", False),
        "assigner": ("Reference", False),
    },
    "Reference": {
        "reference": ("string", False),
        "type": ("uri", False),
        "identifier": ("Identifier", False),
        "display": ("string", False),
    },
    "ObservationReferenceRange": {
        "low": ("Quantity", False),
        "high": ("Quantity", False),
        "type": ("CodeableConcept", False),
        "appliesTo": ("CodeableConcept", True),
        "age": ("Range", False),
        "text": ("string", False),
    },
    "MedicationAdministrationDosage": {
        "text": ("string", False),
        "site": ("CodeableConcept", False),
        "route": ("CodeableConcept", False),
        "method": ("CodeableConcept", False),
        "dose": ("Quantity", False),
        "rateRatio": ("Ratio", False),
        "rateQuantity": ("Quantity", False),
    },
    # A contained resource: only a contained Medication is read (its code); see _contained.
    "Medication": {"id": ("id", False), "code": ("CodeableConcept", False)},
}
_BACKBONE = frozenset({"ObservationReferenceRange", "MedicationAdministrationDosage"})

# --- resources: the elements the rules may read, in R4 element order -------------------------------------

RESOURCES: dict[str, Table] = {
    "Patient": {"id": ("id", False), "gender": ("code", False), "birthDate": ("date", False)},
    "Observation": {
        "id": ("id", False),
        "status": ("code", False),
        "code": ("CodeableConcept", False),
        "effectiveDateTime": ("dateTime", False),
        "effectivePeriod": ("Period", False),
        "effectiveInstant": ("instant", False),
        "issued": ("instant", False),
        "valueQuantity": ("Quantity", False),
        "valueCodeableConcept": ("CodeableConcept", False),
        "valueString": ("string", False),
        "valueInteger": ("integer", False),
        "dataAbsentReason": ("CodeableConcept", False),
        "interpretation": ("CodeableConcept", True),
        "referenceRange": ("ObservationReferenceRange", True),
    },
    "Condition": {
        "id": ("id", False),
        "clinicalStatus": ("CodeableConcept", False),
        "verificationStatus": ("CodeableConcept", False),
        "code": ("CodeableConcept", False),
        "onsetDateTime": ("dateTime", False),
        "onsetPeriod": ("Period", False),
        "abatementDateTime": ("dateTime", False),
        "abatementAge": ("Quantity", False),
        "abatementPeriod": ("Period", False),
        "abatementRange": ("Range", False),
        "abatementString": ("string", False),
        "abatementBoolean": ("not-r4", False),  # STU3 only: a record that says so cannot be read as R4
        "recordedDate": ("dateTime", False),
    },
    "MedicationAdministration": {
        "id": ("id", False),
        "contained": ("Resource", True),
        "status": ("code", False),
        "medicationCodeableConcept": ("CodeableConcept", False),
        "medicationReference": ("Reference", False),
        "effectiveDateTime": ("dateTime", False),
        "effectivePeriod": ("Period", False),
        "dosage": ("MedicationAdministrationDosage", False),
    },
}

# Required where the rules need them (checked when every element read is well-formed, then the choices).
REQUIRED: dict[str, tuple[str, ...]] = {"Observation": ("status",)}
REQUIRED_COMPLEX: dict[str, tuple[str, ...]] = {"Observation": ("code",)}  # absent (an explicit null is absent data)
CHOICES: dict[str, tuple[tuple[str, ...], ...]] = {
    "Observation": (
        ("effectiveDateTime", "effectivePeriod", "effectiveInstant"),
        ("valueQuantity", "valueCodeableConcept", "valueString", "valueInteger"),
    ),
}


def supports(resource_type: str) -> bool:
    return resource_type in RESOURCES


# The walk below is compiled once from the tables into one checker per element (no table look-ups per value).
# Checkers return locations relative to the value checked, prefixed on the way out, so that the usual case
# (nothing wrong) builds no location at all.

Checker = Callable[[Any], "Problem | None"]


def _primitive_checker(message_of: Callable[[Any], str | None]) -> Checker:
    def check(value: Any) -> Problem | None:
        message = message_of(value)
        return None if message is None else ((), message)

    return check


def _extension(value: Any) -> Problem | None:
    if value.__class__ is not dict:
        return (), f"Expected a JSON object here (Extension), found {_json_type(value)}"
    url = value.get("url")  # only its url is checked: the value of an extension is never read
    message = "An extension needs a url" if url is None else _uri(url)
    return None if message is None else (("url",), message)


def _list_of(name: str, item_check: Checker) -> Checker:
    def check(value: Any) -> Problem | None:
        if value.__class__ is not list:
            return (), f"Expected a list here, found {_json_type(value)}"
        for index, item in enumerate(value):
            if item is None:
                return (), f"null is not allowed as an element of {name}"
            found = item_check(item)
            if found is not None:
                return (index, *found[0]), found[1]
        return None

    return check


def _single(datatype: str, item_check: Checker) -> Checker:
    def check(value: Any) -> Problem | None:
        if value.__class__ is list:
            return (), f"Expected a single {datatype} here, found a list"
        return item_check(value)

    return check


def _element_check(datatype: str, many: bool, name: str) -> Checker:
    """The checker of one element: a single value of `datatype`, or a list of them (`many`)."""
    item = _VALUE_CHECKS[datatype]
    if many:
        return _list_of(name, item)
    return _single(datatype, item)


def _complex_checker(datatype: str, checks: dict[str, Checker]) -> Checker:
    """The checker of a complex datatype; `checks` (its elements' checkers) is filled once all exist."""
    table = COMPLEX[datatype]
    backbone = datatype in _BACKBONE
    extensions = _list_of("extension", _extension)
    modifier_extensions = _list_of("modifierExtension", _extension)

    def check(value: Any) -> Problem | None:
        if value.__class__ is not dict:
            return (), f"Expected a JSON object here ({datatype}), found {_json_type(value)}"
        # The first problem among the elements of the datatype, in the order written.
        for key, item in value.items():
            element_check = checks.get(key)
            if element_check is not None:
                if item is None:
                    continue
                found = element_check(item)
            elif key == "extension":
                found = extensions(item)
            elif backbone and key == "modifierExtension":
                found = modifier_extensions(item)
            elif key == "id" or (key[:1] == "_" and key[1:] in table):
                continue  # an element id or a primitive's extensions: never read
            else:
                return (key,), f"Unknown element (not part of the FHIR R4 {datatype})"
            if found is not None:
                return (key, *found[0]), found[1]
        return None

    return check


def _contained(value: Any) -> Problem | None:
    if value.__class__ is not dict:
        return (), f"Expected a JSON object here (a contained resource), found {_json_type(value)}"
    rtype = value.get("resourceType")
    if rtype.__class__ is not str or not rtype.strip():
        return ("resourceType",), "A contained resource has no resourceType"
    if rtype != "Medication":
        return None  # not read
    for key, check in _CONTAINED_MEDICATION:
        item = value.get(key)
        found = None if item is None else check(item)
        if found is not None:
            return (key, *found[0]), found[1]
    return None


# datatype -> the checker of one value. Complex datatypes refer to each other (Reference -> Identifier ->
# Reference), so their checkers are made first and their element checkers filled in after.
_VALUE_CHECKS: dict[str, Checker] = {name: _primitive_checker(check) for name, check in PRIMITIVES.items()}
_VALUE_CHECKS["Resource"] = _contained
_VALUE_CHECKS["Extension"] = _extension
_ELEMENT_CHECKS: dict[str, dict[str, Checker]] = {name: {} for name in COMPLEX}
_VALUE_CHECKS.update({name: _complex_checker(name, _ELEMENT_CHECKS[name]) for name in COMPLEX})
for _name, _table in COMPLEX.items():
    _ELEMENT_CHECKS[_name].update({key: _element_check(t, many, key) for key, (t, many) in _table.items()})

_CONTAINED_MEDICATION = tuple(
    (key, _element_check(datatype, many, key)) for key, (datatype, many) in COMPLEX["Medication"].items()
)

# --- the compiled acceptance test ------------------------------------------------------------------------
# For each (resource type, elements read), the tables above are also written out as the source of one flat
# Python function, compiled once (as `dataclasses` writes its __init__): it answers only "certainly valid"
# (True) or "look closer" (False), with no closures, no locations and no messages. A resource it accepts is
# accepted by the checkers above too; anything else (a wrong type, an extension, an unknown element, a
# contained resource, nesting beyond what it unrolls) goes to those checkers, which name the first problem.
# The generated source depends only on the tables, never on a request.

_UNROLL_DEPTH = 4  # complex datatypes written out inline; deeper ones (Reference.identifier...) call a checker
_INLINE_PRIMITIVES = {
    "string": "{v}.__class__ is not str or not {v}",
    "uri": "{v}.__class__ is not str",
    "code": "{v}.__class__ is not str or not _code({v})",
    "id": "{v}.__class__ is not str or not _id_ok({v})",
    "boolean": "{v} is not True and {v} is not False",
    "integer": "{v}.__class__ is not int or not -2147483648 <= {v} <= 2147483647",
    "decimal": "{v}.__class__ is not float and {v}.__class__ is not int",
    "comparator": "{v}.__class__ is not str or {v} not in _comparators",
    "date": "{v}.__class__ is not str or not _date_ok({v})",
    "dateTime": "{v}.__class__ is not str or not _date_time_ok({v})",
    "instant": "{v}.__class__ is not str or not _instant_ok({v})",
}


def _valid_text(check: Callable[[Any], str | None]) -> Callable[[str], bool]:
    # Dates recur within a record (effective and issued, a panel's results) and across a worker's requests;
    # only the verdict on the date text is kept, bounded.
    return functools.lru_cache(maxsize=4096)(lambda text: check(text) is None)


class _Source:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.names = 0
        self.checkers: dict[str, Checker] = {}

    def var(self) -> str:
        self.names += 1
        return f"v{self.names}"

    def add(self, indent: int, line: str) -> None:
        self.lines.append("    " * indent + line)

    def checker(self, datatype: str, many: bool, name: str) -> str:
        """The name of the general checker of an element, for what is not written out inline."""
        ref = f"_check_{len(self.checkers)}"
        self.checkers[ref] = _element_check(datatype, many, name)
        return ref


def _emit_value(src: _Source, datatype: str, v: str, indent: int, depth: int) -> None:
    """Lines that return False unless the value in variable `v` is certainly a valid `datatype`."""
    if datatype in _INLINE_PRIMITIVES:
        src.add(indent, f"if {_INLINE_PRIMITIVES[datatype].format(v=v)}:")
        src.add(indent + 1, "return False")
        return
    if datatype not in COMPLEX or depth >= _UNROLL_DEPTH:  # "Resource" (contained), "not-r4", deep nesting
        src.add(indent, f"if {src.checker(datatype, False, datatype)}({v}) is not None:")
        src.add(indent + 1, "return False")
        return
    table = COMPLEX[datatype]
    key, item = src.var(), src.var()
    src.add(indent, f"if {v}.__class__ is not dict:")
    src.add(indent + 1, "return False")
    src.add(indent, f"for {key}, {item} in {v}.items():")
    first = True
    for name, (element_type, many) in table.items():
        src.add(indent + 1, f"{'if' if first else 'elif'} {key} == {name!r}:")
        first = False
        src.add(indent + 2, f"if {item} is None:")
        src.add(indent + 3, "continue")
        _emit_element(src, element_type, many, item, indent + 2, depth + 1)
    src.add(indent + 1, f"elif {key} == 'id' or ({key}[:1] == '_' and {key}[1:] in {sorted(table)!r}):")
    src.add(indent + 2, "continue")
    src.add(indent + 1, "else:")  # an extension, a modifierExtension, an unknown element: the checkers say
    src.add(indent + 2, "return False")


def _emit_element(src: _Source, datatype: str, many: bool, v: str, indent: int, depth: int) -> None:
    if not many:
        _emit_value(src, datatype, v, indent, depth)
        return
    item = src.var()
    src.add(indent, f"if {v}.__class__ is not list:")
    src.add(indent + 1, "return False")
    src.add(indent, f"for {item} in {v}:")  # a null item fails the item's own type test
    _emit_value(src, datatype, item, indent + 1, depth)


def _compile_accept(rtype: str, read: frozenset[str]) -> Callable[[Mapping[str, Any]], bool]:
    """The compiled acceptance test of the elements `read` of a `rtype` (see above)."""
    src = _Source()
    src.add(0, "def accept(resource):")
    for name, (datatype, many) in RESOURCES[rtype].items():
        if name not in read:
            continue
        if datatype == "not-r4":
            src.add(1, f"if {name!r} in resource:")
            src.add(2, "return False")
            continue
        v = src.var()
        src.add(1, f"{v} = resource.get({name!r})")
        src.add(1, f"if {v} is not None:")
        _emit_element(src, datatype, many, v, 2, 0)
    for name in REQUIRED.get(rtype, ()):
        if name in read:
            src.add(1, f"if resource.get({name!r}) is None:")
            src.add(2, "return False")
    for name in REQUIRED_COMPLEX.get(rtype, ()):
        if name in read:
            src.add(1, f"if {name!r} not in resource:")
            src.add(2, "return False")
    for group in CHOICES.get(rtype, ()):
        present = " + ".join(f"(resource.get({name!r}) is not None)" for name in group if name in read)
        if present:
            src.add(1, f"if {present} > 1:")
            src.add(2, "return False")
    src.add(1, "return True")
    namespace: dict[str, Any] = {
        "_code": _CODE.fullmatch,
        "_id_ok": _ID.fullmatch,
        "_comparators": COMPARATORS,
        "_date_ok": _DATE_OK,
        "_date_time_ok": _DATE_TIME_OK,
        "_instant_ok": _INSTANT_OK,
        **src.checkers,
    }
    exec(compile("\n".join(src.lines), f"<structure check of {rtype}>", "exec"), namespace)
    accept: Callable[[Mapping[str, Any]], bool] = namespace["accept"]
    accept.__doc__ = "\n".join(src.lines)  # the source, for whoever inspects it
    return accept


_DATE_OK = _valid_text(_date)
_DATE_TIME_OK = _valid_text(_date_time)
_INSTANT_OK = _valid_text(_instant)

# (resource type, elements read) -> (the compiled acceptance test, the checkers of those elements in R4 element
# order). `read` is a frozenset (its hash is cached), so the look-up costs one dict probe per resource.
Plan = tuple[Callable[[Mapping[str, Any]], bool], tuple[tuple[str, str, Checker], ...]]
_PLANS: dict[tuple[str, Collection[str]], Plan] = {}


def _plan(rtype: str, read: Collection[str]) -> Plan:
    key = (rtype, read if isinstance(read, frozenset) else frozenset(read))
    plan = _PLANS.get(key)
    if plan is None:
        plan = (
            _compile_accept(rtype, key[1]),
            tuple(
                (name, datatype, _element_check(datatype, many, name))
                for name, (datatype, many) in RESOURCES[rtype].items()
                if name in read
            ),
        )
        if len(_PLANS) < 256:  # a handful of read sets exist; never grows with the traffic
            _PLANS[key] = plan
    return plan


def first_structure_problem(resource: Mapping[str, Any], read: Collection[str]) -> Problem | None:
    """(location, message) of the first problem among the elements `read` of a supported resource, or None."""
    rtype = str(resource.get("resourceType"))
    accept, checks = _plan(rtype, read)
    if accept(resource):
        return None
    return first_problem_in(resource, rtype, read, checks)


def first_problem_in(
    resource: Mapping[str, Any], rtype: str, read: Collection[str], checks: tuple[tuple[str, str, Checker], ...]
) -> Problem | None:
    """The element-by-element check (the compiled test's fallback), naming the first problem in R4 order."""
    for key, datatype, check in checks:
        item = resource.get(key)
        if item is None:
            if datatype == "not-r4" and key in resource:
                return (key,), _not_r4(item)
            continue
        found = check(item)
        if found is not None:
            return (key, *found[0]), found[1]
    for key in REQUIRED.get(rtype, ()):
        if key in read and resource.get(key) is None:
            return (key,), f"The required element {key} is missing"
    for key in REQUIRED_COMPLEX.get(rtype, ()):
        if key in read and key not in resource:
            return (key,), f"The required element {key} is missing"
    for group in CHOICES.get(rtype, ()):
        present = [key for key in group if key in read and resource.get(key) is not None]
        if len(present) > 1:
            return (), f"Only one of {', '.join(group)} may be present, found {', '.join(present)}"
    return None
