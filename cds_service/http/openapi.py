"""GET /openapi.json: the OpenAPI description of the service (open, like discovery)."""

from __future__ import annotations

from flask import Blueprint, Response, current_app

from ..openapi import openapi_document
from .common import json_response

bp = Blueprint("openapi", __name__)


@bp.get("/openapi.json")
def openapi() -> Response:
    document = current_app.extensions.get("cds_openapi")
    if document is None:
        settings = current_app.extensions["cds_settings"]
        document = current_app.extensions["cds_openapi"] = openapi_document(settings.public_base_url)
    return json_response(document)
