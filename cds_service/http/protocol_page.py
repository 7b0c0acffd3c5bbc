"""GET /protocol: the pharmacist-readable protocol page that every card's `source.url` points into."""

from __future__ import annotations

from flask import Blueprint, Response, current_app

from ..protocol_page import protocol_page

bp = Blueprint("protocol_page", __name__)


@bp.get("/protocol")
def page() -> Response:
    cached = current_app.extensions.get("cds_protocol_page")
    if cached is None:
        engine = current_app.extensions["cds_engine"]
        cached = protocol_page(engine.protocol, engine.renderer.texts).encode("utf-8")
        current_app.extensions["cds_protocol_page"] = cached
    response = Response(cached, mimetype="text/html")
    response.headers["Cache-Control"] = "public, max-age=300"
    response.headers["Content-Security-Policy"] = "default-src 'none'; style-src 'unsafe-inline'"
    return response
