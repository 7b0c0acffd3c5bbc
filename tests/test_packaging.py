"""Packaging: a real `pip install .` (not editable) into a fresh venv outside the checkout carries the protocol
and the card wording, and `cds-service` works from there; the package list, license and constraints agree."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import orjson
import pytest
import requests
from support_server_process import free_port

from cds_service.settings import REPO_ROOT, Settings

PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _packages_on_disk() -> set[str]:
    return {".".join(p.parent.relative_to(REPO_ROOT).parts) for p in (REPO_ROOT / "cds_service").rglob("__init__.py")}


def test_every_python_package_goes_into_the_wheel() -> None:
    from setuptools import find_packages

    found = set(find_packages(where=str(REPO_ROOT), include=["cds_service", "cds_service.*"]))
    assert _packages_on_disk() <= found
    setup_py = (REPO_ROOT / "setup.py").read_text(encoding="utf-8")
    assert '"cds_service.protocol_files"' in setup_py and '"cds_service.card_files"' in setup_py
    mapped = PYPROJECT["tool"]["setuptools"]["package-dir"]
    assert mapped == {"cds_service.protocol_files": "protocol", "cds_service.card_files": "cards"}
    # the pharmacist's folders stay where they are
    assert (REPO_ROOT / "protocol" / "tarlatamab.yaml").is_file() and (REPO_ROOT / "cards" / "common.yaml").is_file()


def test_license_is_an_spdx_expression_and_setuptools_is_recent() -> None:
    assert PYPROJECT["project"]["license"] == "LicenseRef-Proprietary"
    assert any(r.startswith("setuptools>=77") for r in PYPROJECT["build-system"]["requires"])


def test_constraints_pin_every_runtime_dependency() -> None:
    pinned = {
        line.split("==")[0].lower().replace("_", "-").replace(".", "-")
        for line in (REPO_ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines()
        if "==" in line and not line.startswith("#")
    }
    for requirement in PYPROJECT["project"]["dependencies"]:
        name = requirement.split("[")[0].split(">")[0].split("<")[0].split("=")[0].strip()
        assert name.lower().replace("_", "-").replace(".", "-") in pinned, name


def test_settings_override_the_packaged_files(tmp_path: Path) -> None:
    settings = Settings.from_env({"CDS_PROTOCOL_FILE": str(tmp_path / "p.yaml"), "CDS_CARDS_DIR": str(tmp_path)})
    assert settings.protocol_file == tmp_path / "p.yaml" and settings.cards_dir == tmp_path
    default = Settings.from_env({})
    assert default.protocol_file.is_file() and (default.cards_dir / "common.yaml").is_file()


@pytest.mark.slow
@pytest.mark.e2e
def test_pip_install_outside_the_checkout_runs_replay(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CDS_", "PYTHON", "VIRTUAL_ENV"))}
    env["CDS_DATA_DIR"] = str(work / "data")

    def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(args, cwd=work, env=env, capture_output=True, text=True, timeout=timeout, check=False)

    base_python = getattr(sys, "_base_executable", sys.executable)
    assert run(base_python, "-m", "venv", str(venv)).returncode == 0
    installed = run(str(venv / "bin" / "pip"), "install", "-q", "-c", str(REPO_ROOT / "constraints.txt"), str(REPO_ROOT))
    assert installed.returncode == 0, installed.stderr[-3000:]
    assert "project.license" not in installed.stderr  # no deprecation warning about the license table

    located = run(str(venv / "bin" / "python"), "-c", "import cds_service, sys; print(cds_service.__file__)")
    assert located.stdout.strip().startswith(str(venv)), located.stdout  # the installed copy, not the checkout
    installed_root = Path(located.stdout.strip()).parent.parent
    missing = [p for p in _packages_on_disk() if not (installed_root / p.replace(".", "/") / "__init__.py").is_file()]
    assert missing == []  # every subpackage is in the wheel

    fixture = REPO_ROOT / "fixtures" / "requests" / "schedule-c1d1.json"
    replay = run(str(venv / "bin" / "cds-service"), "replay", "--now", "2026-11-21T09:00:00Z", str(fixture))
    assert replay.returncode == 0, replay.stderr
    assert orjson.loads(replay.stdout)["cards"]

    catalogue = run(str(venv / "bin" / "cds-service"), "protocol")
    assert catalogue.returncode == 0 and "tarlatamab" in catalogue.stdout.lower()

    # the server starts from the installed copy (gevent workers and their dependencies installed)
    port = free_port()
    serve_env = {**env, "CDS_PORT": str(port), "HOME": str(work)}
    server = subprocess.Popen([str(venv / "bin" / "cds-service"), "serve"], cwd=work, env=serve_env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        health = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and server.poll() is None:
            with contextlib.suppress(requests.RequestException):
                health = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            time.sleep(0.2)
        assert health is not None and health.status_code == 200, "the installed service did not answer"
        answer = requests.post(f"http://127.0.0.1:{port}/cds-services/tarlatamab-order-sign", data=fixture.read_bytes(),
                               headers={"Content-Type": "application/json"}, timeout=10)  # fmt: skip
        assert answer.status_code == 200 and answer.json()["cards"]
    finally:
        server.terminate()
        try:
            output, _ = server.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            output, _ = server.communicate(timeout=5)
    log = output.decode(errors="replace")
    assert "Using worker: gevent" in log and "Traceback" not in log and "Control server" not in log

    # overridable: a protocol file that does not exist is named in a one-line error
    env["CDS_PROTOCOL_FILE"] = str(work / "missing.yaml")
    missing = run(str(venv / "bin" / "cds-service"), "protocol")
    assert missing.returncode == 2 and "missing.yaml" in missing.stderr


def test_ci_runs_the_readme_test_command_exactly() -> None:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    ci = (REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    command = ci[ci.index("# The README's test command (keep the two identical):") + 1]
    assert command == "pip install -e '.[test]' && pytest"
    quick_start = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert f"    {command}\n" in quick_start
    assert "    python3 -m venv .venv && . .venv/bin/activate\n" in quick_start
