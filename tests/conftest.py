"""Shared test fixtures: settings on a temporary store, the Flask app and client, a fixed clock."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from card_validator import card_text_problems, contradicting_suggestions

from cds_service.app import create_app
from cds_service.cards import CardRenderer
from cds_service.protocol import Protocol, load_protocol
from cds_service.settings import REPO_ROOT, Settings

# The evaluation time of the tests: Saturday 2026-11-21 09:00 UTC.
NOW = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)
FIXTURES = REPO_ROOT / "fixtures"


@pytest.fixture(scope="session")
def protocol() -> Protocol:
    return load_protocol(REPO_ROOT / "protocol" / "tarlatamab.yaml")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, now=NOW)


@pytest.fixture
def make_app(tmp_path: Path) -> Callable[..., Any]:
    """Build an app with settings overrides; each app gets the test's temporary store unless told otherwise."""
    apps = []

    def factory(**overrides: Any) -> Any:
        base = {"data_dir": tmp_path, "now": NOW}
        base.update(overrides)
        app = create_app(Settings(**base))
        app.config["TESTING"] = True
        apps.append(app)
        return app

    yield factory
    for app in apps:
        writer = app.extensions.get("cds_audit_writer")
        if writer is not None:
            writer.flush()
        app.extensions["cds_store"].dispose()


@pytest.fixture
def app(make_app: Callable[..., Any]) -> Any:
    return make_app()


@pytest.fixture
def client(app: Any) -> Iterator[Any]:
    with app.test_client() as c:
        yield c


def postgres_url() -> str | None:
    return os.environ.get("CDS_TEST_DATABASE_URL") or None


@pytest.fixture(autouse=True)
def _every_rendered_card_reads_clinically(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every card any test renders (fixture replays, rule tests, HTTP tests) is checked: no internal references
    or raw unit codes, a source.url to its rule, no contradicting suggestions on one order (issue 9)."""
    problems: list[str] = []
    original = CardRenderer.render

    def checked(self: CardRenderer, *args: Any, **kwargs: Any) -> Any:
        rendered = original(self, *args, **kwargs)
        cards = [card for _, card in rendered]
        for i, card in enumerate(cards):
            problems.extend(card_text_problems(card, f"cards[{i}]"))
        problems.extend(contradicting_suggestions(cards))
        return rendered

    monkeypatch.setattr(CardRenderer, "render", checked)
    yield
    assert not problems, "cards a clinician cannot read as they are:\n" + "\n".join(problems[:20])
