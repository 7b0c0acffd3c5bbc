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

# Settings() reads CDS_* variables: the tests start from the defaults, whatever the shell has set
# (CDS_TEST_DATABASE_URL is the tests' own).
for _name in [n for n in os.environ if n.upper().startswith("CDS_") and n.upper() != "CDS_TEST_DATABASE_URL"]:
    del os.environ[_name]

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


LOCAL_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
_probe: dict[str, str | None] = {}


def _local_postgres() -> str | None:
    """The machine's local PostgreSQL when it answers within 2 s (probed once per test session)."""
    if "url" not in _probe:
        try:
            import psycopg

            with psycopg.connect(LOCAL_POSTGRES, connect_timeout=2):
                pass
            _probe["url"] = LOCAL_POSTGRES
        except Exception as exc:  # not installed, refused, no such database: the PostgreSQL tests skip
            _probe["url"] = None
            _probe["why"] = f"{type(exc).__name__}"
    return _probe["url"]


def postgres_url() -> str | None:
    """CDS_TEST_DATABASE_URL, else the local server when it answers, else None (PostgreSQL tests skip)."""
    return os.environ.get("CDS_TEST_DATABASE_URL") or _local_postgres()


def pytest_report_header(config: pytest.Config) -> str:
    url = postgres_url()
    if url is None:
        return (
            f"PostgreSQL tests: SKIPPED (CDS_TEST_DATABASE_URL is not set and {LOCAL_POSTGRES} does not answer: "
            f"{_probe.get('why')})"
        )
    return f"PostgreSQL tests: on {url.rsplit('@', 1)[-1]}"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if postgres_url() is None:
        terminalreporter.write_line(
            "NOTE: the PostgreSQL store tests were skipped: set CDS_TEST_DATABASE_URL or start PostgreSQL on "
            "127.0.0.1:5432 (database test)",
            yellow=True,
            bold=True,
        )


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
