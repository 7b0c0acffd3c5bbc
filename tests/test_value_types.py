"""`quick_init` (issue 11): the faster __init__ of the value types built many times per request changes nothing
about them: the same signature, the same instances, still frozen."""

from __future__ import annotations

import dataclasses
import inspect
from datetime import UTC, date, datetime
from typing import Any

import pytest

from cds_service.facts.labs import AnalyteReading
from cds_service.facts.model import Administration, DataIssue, Dose, GradePoint, LabResult, SchedulePosition
from cds_service.reading.quantities import Converted
from cds_service.value_types import quick_init

QUICK = (Converted, LabResult, Administration, Dose, SchedulePosition, DataIssue, GradePoint, AnalyteReading)


def _reference_init(cls: type) -> Any:
    """The __init__ `dataclasses` writes for the same fields (built on a copy of the class)."""
    fields = [(f.name, f.type, f) for f in dataclasses.fields(cls)]
    return dataclasses.make_dataclass(cls.__name__, fields, frozen=True, slots=True)


def _value_for(field: dataclasses.Field[Any], n: int) -> Any:
    return f"{field.name}-{n}"  # any value: the types are not checked by either __init__


@pytest.mark.parametrize("cls", QUICK, ids=lambda c: c.__name__)
def test_the_quick_init_has_the_dataclass_signature_and_builds_the_same_instance(cls: type) -> None:
    reference = _reference_init(cls)
    assert str(inspect.signature(cls)) == str(inspect.signature(reference))
    fields = dataclasses.fields(cls)
    required = [f for f in fields if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    for n in range(3):
        every = {f.name: _value_for(f, n) for f in fields}
        minimal = {f.name: _value_for(f, n) for f in required}
        for kwargs in (every, minimal):
            built, expected = cls(**kwargs), reference(**kwargs)
            assert [getattr(built, f.name) for f in fields] == [getattr(expected, f.name) for f in fields]
        positional = [every[f.name] for f in fields]
        assert cls(*positional) == cls(**every)
        assert hash(cls(*positional)) == hash(cls(**every))


@pytest.mark.parametrize("cls", QUICK, ids=lambda c: c.__name__)
def test_a_quick_value_type_stays_frozen(cls: type) -> None:
    fields = dataclasses.fields(cls)
    instance = cls(**{f.name: _value_for(f, 0) for f in fields})
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(instance, fields[0].name, "changed")
    with pytest.raises(TypeError):
        cls()  # the required fields are still required


def test_a_lab_result_built_quickly_reads_as_before() -> None:
    result = LabResult("anc", "o1", datetime(2026, 11, 20, 8, tzinfo=UTC), date(2026, 11, 20), 0.9, "10*9/L", "0.9", "10*9/L")
    assert result.usable and result.final and result.below(1.0) is True and result.uln is None
    assert dataclasses.replace(result, preliminary=True).final is False


def test_default_factories_give_each_instance_its_own_value() -> None:
    @quick_init
    @dataclasses.dataclass(frozen=True, slots=True)
    class Bag:
        name: str
        items: list[str] = dataclasses.field(default_factory=list)

    first, second = Bag("a"), Bag("b")
    assert first.items == [] and first.items is not second.items
    assert Bag("c", ["x"]).items == ["x"]


def test_only_frozen_slotted_dataclasses_without_post_init_are_accepted() -> None:
    @dataclasses.dataclass(frozen=True)
    class NoSlots:
        a: int

    @dataclasses.dataclass(slots=True)
    class NotFrozen:
        a: int

    @dataclasses.dataclass(frozen=True, slots=True)
    class PostInit:
        a: int

        def __post_init__(self) -> None:
            pass

    for cls in (NoSlots, NotFrozen, PostInit):
        with pytest.raises(TypeError):
            quick_init(cls)
