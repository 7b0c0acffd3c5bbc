"""The worked example of docs/governance.md: a candidate protocol, derived from the current protocol file, in
which C1D1 and C1D8 no longer need 22-24 h extended monitoring but 8-10 h of observation (R1 and R2 keep it).

`python tests/governance_example.py` rewrites docs/examples/candidate-monitoring-c1d1-c1d8.yaml from
protocol/tarlatamab.yaml and the command output quoted in docs/governance.md; a test fails when either is stale.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
PROTOCOL = ROOT / "protocol" / "tarlatamab.yaml"
EXAMPLE = ROOT / "docs" / "examples" / "candidate-monitoring-c1d1-c1d8.yaml"
GUIDE = ROOT / "docs" / "governance.md"
NOW = "2026-11-21T09:00:00Z"
EXAMPLE_ARGS = ["--protocol", "docs/examples/candidate-monitoring-c1d1-c1d8.yaml", "--now", NOW,
                "fixtures/requests", "fixtures/corpus"]  # fmt: skip
BEGIN, END = "<!-- compare-output:begin -->", "<!-- compare-output:end -->"

HEADER = """# CANDIDATE protocol for review, not in service: the worked example of `cds-service compare`
# (docs/governance.md), generated from protocol/tarlatamab.yaml by tests/governance_example.py. It differs in:
#   - protocol.version: "-candidate" appended
#   - monitoring.extended.positions: C1D1 and C1D8 removed (R1 and R2 keep 22-24 h extended monitoring)
#   - monitoring.observation: a first row, C1D1 and C1D8: observation for 8-10 hours after the infusion
# i.e. a hypothetical label revision that shortens monitoring after the two step-up doses.

"""


def candidate_text(protocol_text: str) -> str:
    """The protocol file with the three changes, comments kept; fails loudly when the file's layout moved."""
    data = yaml.safe_load(protocol_text)
    version = str(data["protocol"]["version"])
    text, n = re.subn(r'(?m)^(  version: )"?[^"\n]*"?$', rf'\1"{version}-candidate"', protocol_text, count=1)
    assert n == 1, "protocol.version line not found"
    extended = data["monitoring"]["extended"]["positions"]
    kept = [p for p in extended if p not in ("C1D1", "C1D8")]
    text, n = re.subn(
        r"(?m)^(  extended:\n(?:    #.*\n)*    positions: )\[[^\]]*\]",
        lambda m: m.group(1) + "[" + ", ".join(kept) + "]",
        text,
        count=1,
    )
    assert n == 1, "monitoring.extended.positions not found"
    text, n = re.subn(
        r"(?m)^(  observation:\n(?:    #.*\n)*)", r'\1    - {positions: [C1D1, C1D8], hours: "8-10"}\n', text, count=1
    )
    assert n == 1, "monitoring.observation not found"
    start = text.index("protocol:\n")
    result = HEADER + text[start:]
    parsed = yaml.safe_load(result)
    assert parsed["monitoring"]["extended"]["positions"] == kept
    assert parsed["monitoring"]["observation"][0] == {"positions": ["C1D1", "C1D8"], "hours": "8-10"}
    return result


def write_candidate(path: Path) -> Path:
    path.write_text(candidate_text(PROTOCOL.read_text(encoding="utf-8")), encoding="utf-8")
    return path


def example_output() -> tuple[int, str]:
    """Exit status and standard output of the documented command, run from the repository root."""
    sys.path.insert(0, str(ROOT))
    from cds_service.cli import main

    out = io.StringIO()
    cwd = Path.cwd()
    try:
        os.chdir(ROOT)
        with contextlib.redirect_stdout(out):
            code = main(["compare", *EXAMPLE_ARGS])
    finally:
        os.chdir(cwd)
    return code, out.getvalue()


def guide_block(guide_text: str) -> str:
    return guide_text.split(BEGIN, 1)[1].split(END, 1)[0]


def render_block(output: str) -> str:
    return f"\n```text\n{output}```\n"


def regenerate() -> None:
    write_candidate(EXAMPLE)
    code, output = example_output()
    assert code == 1, f"the example should change cards (exit {code})"
    guide = GUIDE.read_text(encoding="utf-8")
    GUIDE.write_text(guide.replace(guide_block(guide), render_block(output)), encoding="utf-8")


if __name__ == "__main__":
    regenerate()
