"""The protocol page behind every card (GET /protocol) and the reviewers' card preview (issue 9).

The browser test renders the page served by a real HTTP server in headless Chromium (Debian package
`chromium`) and checks the screenshot is not blank and the anchors exist in the DOM the browser built. It is
skipped, saying why, on a machine without Chromium.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import FIXTURES
from werkzeug.serving import make_server

from cds_service.cli import main
from cds_service.protocol import Protocol

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium not installed (apt-get install chromium): headless browser test skipped"
)


def test_protocol_page_has_one_anchor_per_rule(client: Any, protocol: Protocol) -> None:
    response = client.get("/protocol")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    page = response.get_data(as_text=True)
    anchors = re.findall(r'<section class="rule [a-z]+" id="rule-([^"]+)"', page)
    assert anchors == list(protocol.rules)
    assert f"version <strong>{protocol.version}</strong>" in page
    anc = page.split('id="rule-lab-hold.anc"', 1)[1].split("</section>", 1)[0]
    assert "ANC below 1.0 ×10⁹/L" in anc and "Institutional decision" in anc and "hold" in anc
    restart = page.split('id="rule-dose.restart-after-delay"', 1)[1].split("</section>", 1)[0]
    assert "IMDELLTRA prescribing information</a>, section 2.3, Table 4" in restart
    assert re.search(r"(?i)\bseed\b|spec/|protocol\.md", page) is None
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]


@pytest.fixture
def live_server(make_app: Any) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, make_app(), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=5)


def chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess[bytes]:
    assert CHROMIUM is not None
    command = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
        "--no-first-run", f"--user-data-dir={profile}", *args,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, timeout=90, check=False)


def png_pixels(data: bytes) -> tuple[int, int, bytes]:
    """(width, height, decompressed scanlines) of a PNG, with the standard library only."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, width, height = 8, b"", 0, 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        chunk = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height = struct.unpack(">II", chunk[:8])
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    return width, height, zlib.decompress(idat)


def assert_not_blank(png: Path) -> None:
    width, height, pixels = png_pixels(png.read_bytes())
    assert width >= 800 and height >= 600
    # A blank page is one colour: its scanlines hold a handful of distinct byte values. Text, badges and
    # borders make many.
    assert len(set(pixels)) > 30, "screenshot looks blank"


@needs_chromium
def test_protocol_page_in_headless_chromium(live_server: str, tmp_path: Path, protocol: Protocol) -> None:
    url = f"{live_server}/protocol"
    shot = tmp_path / "protocol.png"
    result = chromium(["--window-size=1200,1600", f"--screenshot={shot}", url], tmp_path / "profile")
    assert shot.is_file(), result.stderr.decode(errors="replace")[-2000:]
    assert_not_blank(shot)
    dom = chromium(["--dump-dom", url], tmp_path / "profile2").stdout.decode()
    ids = set(re.findall(r'id="rule-([^"]+)"', dom))
    assert ids == set(protocol.rules), "the browser's DOM lacks rule anchors"


@needs_chromium
def test_card_preview_in_headless_chromium(tmp_path: Path) -> None:
    out = tmp_path / "cards.html"
    requests = FIXTURES / "requests"
    files = [requests / "clinical-neutropenia-hold.json", requests / "schedule-c1d1.json"]
    assert main(["preview", "--now", "2026-11-21T09:00:00Z", "--out", str(out), *map(str, files)]) == 0
    html = out.read_text(encoding="utf-8")
    assert html.count('class="card ') == 2 and "Withhold tarlatamab: ANC 0.8 ×10⁹/L" in html
    assert "<script" not in html
    shot = tmp_path / "cards.png"
    chromium(["--window-size=1000,1400", f"--screenshot={shot}", out.as_uri()], tmp_path / "profile")
    assert_not_blank(shot)


def test_preview_renders_response_files_and_refuses_other_json(tmp_path: Path) -> None:
    response = tmp_path / "response.json"
    response.write_text(
        '{"cards": [{"summary": "S <b>x</b>", "indicator": "info", "detail": "<img src=x> **bold**",'
        ' "source": {"label": "L", "url": "http://localhost/protocol#rule-x"}}]}',
        encoding="utf-8",
    )
    out = tmp_path / "cards.html"
    assert main(["preview", "--out", str(out), str(response)]) == 0
    html = out.read_text(encoding="utf-8")
    assert "S &lt;b&gt;x&lt;/b&gt;" in html and "<img" not in html and "<strong>bold</strong>" in html
    other = tmp_path / "other.json"
    other.write_text('{"hook": "unknown"}', encoding="utf-8")
    assert main(["preview", "--out", str(out), str(other)]) == 1
