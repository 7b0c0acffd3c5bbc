"""The benchmark's "limit": a bare Flask app that parses the hook request and answers a constant card.

Run under the same gunicorn settings as the service: `gunicorn -w 2 -b 127.0.0.1:PORT bench.bare_app:app`.
It reads and parses the body the way the service does (orjson) and does nothing else, so the ratio
service/bare is the share of the request's cost that is the service's own work.
"""

from __future__ import annotations

import orjson
from flask import Flask, Response, request

app = Flask(__name__)

CARD = {
    "uuid": "5b0e7a8e-3c1f-4d7e-9a52-0c0f6f0e1b2d",
    "summary": "Tarlatamab order check complete",
    "indicator": "info",
    "detail": "No protocol findings for this order.",
    "source": {
        "label": "Tarlatamab (IMDELLTRA) protocol",
        "topic": {"system": "urn:tarlatamab-cds:card-topic", "code": "summary", "display": "Summary"},
    },
}
_RESPONSE = orjson.dumps({"cards": [CARD]})
_DISCOVERY = orjson.dumps({"services": [{"hook": "order-sign", "id": "tarlatamab-order-sign", "description": "bare"}]})


@app.get("/cds-services")
def discovery() -> Response:
    return Response(_DISCOVERY, mimetype="application/json")


@app.post("/cds-services/<service_id>")
def call_service(service_id: str) -> Response:
    try:
        body = orjson.loads(request.get_data(cache=False))
    except orjson.JSONDecodeError:
        return Response(b'{"error":"not JSON"}', status=400, mimetype="application/json")
    if not isinstance(body, dict) or not isinstance(body.get("context"), dict):
        return Response(b'{"error":"not a hook request"}', status=400, mimetype="application/json")
    return Response(_RESPONSE, mimetype="application/json")
