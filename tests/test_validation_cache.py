"""The per-worker validation cache: same answers as validating, bounded, holds no resource content."""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
from fhir_builders import lab

from cds_service import fhir_validation as fv


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    fv.configure_cache(100)
    yield
    fv.configure_cache(20000)


def _stats() -> tuple[int, int]:
    return fv.cache_stats["hits"], fv.cache_stats["misses"]


def test_a_repeated_resource_is_validated_once_with_the_same_answer() -> None:
    obs = lab("anc", 2.5, "2026-11-20T08:00:00Z", oid="anc-1")
    hits, misses = _stats()
    assert fv.validation_issues(obs, "Observation") == []
    assert fv.validation_issues(copy.deepcopy(obs), "Observation") == []
    assert _stats() == (hits + 1, misses + 1)


def test_a_cached_invalid_resource_stays_invalid_and_paths_follow_the_root() -> None:
    obs = lab("anc", 2.5, "2026-11-20T08:00:00Z", oid="anc-1")
    obs["status"] = 123
    first = fv.validation_issues(obs, "Observation")
    again = fv.validation_issues(obs, "prefetch.observations.entry[4].resource")
    assert [i.expression for i in first] == [("Observation.status",)]
    assert [i.expression for i in again] == [("prefetch.observations.entry[4].resource.status",)]
    assert first[0].diagnostics == again[0].diagnostics


def test_a_changed_value_is_a_different_resource() -> None:
    obs = lab("anc", 2.5, "2026-11-20T08:00:00Z", oid="anc-1")
    assert fv.validation_issues(obs, "Observation") == []
    changed = copy.deepcopy(obs)
    changed["valueQuantity"]["value"] = "abc"  # invalid decimal
    assert fv.validation_issues(changed, "Observation") != []


def test_the_cache_is_bounded_and_can_be_turned_off() -> None:
    fv.configure_cache(5)
    for i in range(12):
        fv.validation_issues(lab("anc", 2.0 + i, "2026-11-20T08:00:00Z", oid=f"anc-{i}"), "Observation")
    assert len(fv._validation_cache) <= 5
    fv.configure_cache(0)
    obs = lab("anc", 2.5, "2026-11-20T08:00:00Z", oid="anc-x")
    hits, misses = _stats()
    fv.validation_issues(obs, "Observation")
    fv.validation_issues(obs, "Observation")
    assert _stats() == (hits, misses + 2)
    assert fv._validation_cache == {}


def test_the_cache_holds_digests_and_problem_paths_never_values() -> None:
    obs = lab("anc", 2.5, "2026-11-20T08:00:00Z", oid="anc-secret-id")
    obs["valueQuantity"]["value"] = "4.7-PLANTED"
    fv.validation_issues(obs, "Observation")
    for key, problems in fv._validation_cache.items():
        assert isinstance(key, bytes) and len(key) == 16
        assert "PLANTED" not in repr(problems) and "anc-secret-id" not in repr(problems)
