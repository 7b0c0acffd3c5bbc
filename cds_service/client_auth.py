"""Who is calling: the CDS client identified by its JWT (issue 4), or nobody in open development mode."""

from __future__ import annotations

from dataclasses import dataclass

from flask import Request


@dataclass(frozen=True)
class ClientIdentity:
    issuer: str
    fhir_servers: tuple[str, ...]  # the only fhirServer URLs the service will contact for this client
    jti: str | None = None


class OpenAccess:
    """Development mode: no client verification (the server binds to loopback only)."""

    enabled = False

    def authenticate(self, request: Request, audience: str) -> ClientIdentity | None:
        return None
