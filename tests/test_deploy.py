"""The production topology files: the Dockerfile (numeric non-root user, constraints, package data), the compose
file (nginx -> 2 instances -> PostgreSQL, only the proxy published) and deploy/nginx.conf, which is run for real
in front of two `cds-service serve` instances when nginx is installed (slowloris through the proxy included)."""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml
from support_server_process import ServerProcess, free_port, start_server

from cds_service.settings import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
BODY = (REPO_ROOT / "fixtures" / "requests" / "schedule-c1d1.json").read_bytes()


def test_dockerfile_runs_as_a_numeric_user_from_the_constraints() -> None:
    text = (REPO_ROOT / "Dockerfile").read_text(encoding="utf-8")
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.MULTILINE)
    assert users == ["10001:10001"]
    assert "pip install -c constraints.txt ." in text
    assert "setup.py" in text  # the package list (find_packages + the data packages)
    assert re.search(r'^CMD \["serve"\]', text, flags=re.MULTILINE)
    assert "CDS_WORKER_CLASS=gevent" in text


def test_compose_is_nginx_two_instances_and_postgresql() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text(encoding="utf-8"))
    services = compose["services"]
    assert set(services) == {"proxy", "cds-1", "cds-2", "db"}
    published = [name for name, s in services.items() if s.get("ports")]
    assert published == ["proxy"]  # the instances and the database are not reachable from outside
    for name in ("cds-1", "cds-2"):
        instance = services[name]
        assert instance["user"] == "10001:10001" and instance["read_only"] is True
        assert instance["environment"]["CDS_TRUSTED_ISSUERS_FILE"]
        assert instance["env_file"] == ["./secrets/cds.env"]  # the database password is not in the file
    assert services["db"]["image"].startswith("postgres:")
    assert "nginx.conf" in services["proxy"]["volumes"][0]
    nginx = (DEPLOY / "nginx.conf").read_text(encoding="utf-8")
    assert "server cds-1:8080" in nginx and "server cds-2:8080" in nginx
    assert "client_header_timeout 10s" in nginx and "proxy_request_buffering on" in nginx


def _self_signed(folder: Path) -> None:
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-keyout", str(folder / "cds.key"), "-out", str(folder / "cds.crt")],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip


@contextlib.contextmanager
def nginx_in_front(tmp_path: Path, upstreams: list[ServerProcess]) -> Iterator[str]:
    tls = tmp_path / "tls"
    tls.mkdir()
    _self_signed(tls)
    port = free_port()
    conf = (DEPLOY / "nginx.conf").read_text(encoding="utf-8")
    for i, server in enumerate(upstreams, start=1):
        conf = conf.replace(f"server cds-{i}:8080", "server " + server.base_url.removeprefix("http://"))
    conf = conf.replace("listen 8443 ssl", f"listen 127.0.0.1:{port} ssl").replace("/etc/nginx/tls", str(tls))
    conf = conf.replace("/tmp/nginx", str(tmp_path / "nginx")).replace("access_log /dev/stdout cds;", "access_log off;")
    path = tmp_path / "nginx.conf"
    path.write_text(conf, encoding="utf-8")
    checked = subprocess.run(["nginx", "-t", "-c", str(path), "-p", str(tmp_path)], capture_output=True, text=True,
                             timeout=30)  # fmt: skip
    assert checked.returncode == 0, checked.stderr
    process = subprocess.Popen(["nginx", "-c", str(path), "-p", str(tmp_path), "-g", "daemon off;"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    base = f"https://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(requests.RequestException):
                if requests.get(base + "/healthz", timeout=2, verify=False).status_code == 200:
                    break
            time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nginx") is None or shutil.which("openssl") is None, reason="nginx not installed")
@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_nginx_config_balances_two_instances_and_holds_slow_clients(tmp_path: Path) -> None:
    instances = [start_server(tmp_path / f"data-{i}", tmp_path / f"cds-{i}.log", workers=1) for i in (1, 2)]
    try:
        with nginx_in_front(tmp_path, instances) as base:
            url = base + "/cds-services/tarlatamab-order-sign"
            answers = [requests.post(url, data=BODY, headers={"Content-Type": "application/json"}, timeout=10,
                                     verify=False) for _ in range(6)]  # fmt: skip
            assert all(a.status_code == 200 and a.json()["cards"] for a in answers)
            hits = [s.log_text().count("hook tarlatamab-order-sign") for s in instances]
            assert all(h > 0 for h in hits), hits  # both instances answered
            # slow clients against the TLS front: nginx holds them, the instances never see them
            with _tls_slowloris(base, 100) as opened:
                time.sleep(1.0)
                latencies = _probe_tls(url, 5)
            assert opened >= 90
            assert max(latencies) < 1.0, latencies
    finally:
        for server in instances:
            server.stop()


@contextlib.contextmanager
def _tls_slowloris(base: str, count: int) -> Iterator[int]:
    import socket
    import ssl

    host, port = base.removeprefix("https://").split(":")
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    socks = []
    try:
        for _ in range(count):
            with contextlib.suppress(OSError):
                raw = socket.create_connection((host, int(port)), timeout=2)
                sock = context.wrap_socket(raw, server_hostname="localhost")
                sock.sendall(b"POST /cds-services/tarlatamab-order-sign HTTP/1.1\r\nHost: x\r\nX-a: b\r\n")
                socks.append(sock)
        yield len(socks)
    finally:
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.close()


def _probe_tls(url: str, count: int) -> list[float]:
    out = []
    for _ in range(count):
        started = time.monotonic()
        response = requests.post(url, data=BODY, headers={"Content-Type": "application/json"}, timeout=5, verify=False)
        assert response.status_code == 200
        out.append(time.monotonic() - started)
    return out
