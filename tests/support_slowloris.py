"""A slowloris client bounded in time: N connections that trickle request headers, and a latency probe.

Each slow connection sends a request line and then one header line every `interval` seconds, never the blank
line that ends the headers, for at most `duration` seconds; every socket is closed at the end.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import requests


@dataclass
class Slowloris:
    base_url: str
    connections: int
    duration: float
    interval: float = 1.0
    opened: int = 0
    _socks: list[socket.socket] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Slowloris:
        parts = urlsplit(self.base_url)
        for _ in range(self.connections):
            try:
                sock = socket.create_connection((parts.hostname, parts.port), timeout=2)
                sock.sendall(b"POST /cds-services/tarlatamab-order-sign HTTP/1.1\r\nHost: x\r\n")
            except OSError:
                continue
            self._socks.append(sock)
        self.opened = len(self._socks)
        self._thread = threading.Thread(target=self._trickle, daemon=True)
        self._thread.start()
        return self

    def _trickle(self) -> None:
        deadline = time.monotonic() + self.duration
        n = 0
        while not self._stop.is_set() and time.monotonic() < deadline:
            n += 1
            for sock in list(self._socks):
                try:
                    sock.sendall(f"X-Slow-{n}: a\r\n".encode())
                except OSError:
                    self._socks.remove(sock)
            self._stop.wait(self.interval)

    def still_open(self) -> int:
        return len(self._socks)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        for sock in self._socks:
            with contextlib.suppress(OSError):
                sock.close()


def probe_latencies(url: str, count: int, *, json_body: bytes | None = None, timeout: float = 5.0) -> list[float]:
    """Seconds each of `count` sequential requests took (a request that failed or timed out counts `timeout`)."""
    out: list[float] = []
    for _ in range(count):
        started = time.monotonic()
        try:
            with requests.Session() as session:  # a new connection each time, as a new EHR call would open
                if json_body is None:
                    response = session.get(url, timeout=timeout)
                else:
                    response = session.post(
                        url, data=json_body, headers={"Content-Type": "application/json"}, timeout=timeout
                    )
            ok = response.status_code == 200
        except requests.RequestException:
            ok = False
        out.append(time.monotonic() - started if ok else timeout)
    return out
