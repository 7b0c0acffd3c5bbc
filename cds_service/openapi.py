"""The OpenAPI 3.1 description of the service, served at `GET /openapi.json`.

Derived from the CDS Hooks 2.0 shapes (discovery, the service calls of our three services, feedback) with
the status codes this service answers: 200, 400, 401, 403, 404, 405, 412, 413, 415 and 503. Request schemas
come from the pydantic models that validate the requests (`models.py`), so they cannot drift; they are open
(unknown members are allowed, as CDS Hooks requires). Response schemas state what the service promises (cards,
OperationOutcome errors).
"""

from __future__ import annotations

import copy
from typing import Any

from .models import REQUEST_MODELS, request_schemas
from .services import SERVICES

_ERROR = {"$ref": "#/components/schemas/OperationOutcome"}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/fhir+json": {"schema": _ERROR}}}


_UNAUTHORIZED = {
    "description": "The client JWT is missing or not acceptable (no body; the reason is logged by the service)",
    "headers": {"WWW-Authenticate": {"required": True, "schema": {"type": "string"}}},
}

_SCHEMAS: dict[str, Any] = {
    "OperationOutcome": {
        "type": "object",
        "required": ["resourceType", "issue"],
        "properties": {
            "resourceType": {"const": "OperationOutcome"},
            "issue": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["severity", "code"],
                    "properties": {
                        "severity": {"enum": ["fatal", "error", "warning", "information"]},
                        "code": {"type": "string", "minLength": 1},
                        "diagnostics": {"type": "string", "minLength": 1},
                        "expression": {"type": "array", "minItems": 1, "items": {"type": "string"}},
                    },
                },
            },
        },
    },
    "Coding": {
        "type": "object",
        "required": ["code", "system"],
        "properties": {
            "code": {"type": "string", "minLength": 1},
            "system": {"type": "string", "minLength": 1},
            "display": {"type": "string", "minLength": 1},
        },
    },
    "DisplayedCoding": {
        "allOf": [{"$ref": "#/components/schemas/Coding"}, {"type": "object", "required": ["display"]}],
    },
    "Source": {
        "type": "object",
        "required": ["label"],
        "properties": {
            "label": {"type": "string", "minLength": 1},
            "url": {"type": "string", "format": "uri"},
            "icon": {"type": "string", "format": "uri"},
            "topic": {"$ref": "#/components/schemas/Coding"},
        },
    },
    "Action": {
        "type": "object",
        "required": ["type", "description"],
        "properties": {
            "type": {"enum": ["create", "update", "delete"]},
            "description": {"type": "string", "minLength": 1},
            "resource": {"$ref": "#/components/schemas/Resource"},
            "resourceId": {"type": "string", "minLength": 1},
        },
    },
    "Suggestion": {
        "type": "object",
        "required": ["label"],
        "properties": {
            "label": {"type": "string", "minLength": 1},
            "uuid": {"type": "string", "minLength": 1},
            "isRecommended": {"type": "boolean"},
            "actions": {"type": "array", "minItems": 1, "items": {"$ref": "#/components/schemas/Action"}},
        },
    },
    "Link": {
        "type": "object",
        "required": ["label", "url", "type"],
        "properties": {
            "label": {"type": "string", "minLength": 1},
            "url": {"type": "string", "format": "uri"},
            "type": {"enum": ["absolute", "smart"]},
            "appContext": {"type": "string", "minLength": 1},
            "autolaunchable": {"type": "boolean"},
        },
    },
    "Card": {
        "type": "object",
        "required": ["summary", "indicator", "source"],
        "properties": {
            "uuid": {"type": "string", "minLength": 1},
            "summary": {"type": "string", "minLength": 1, "maxLength": 139},
            "detail": {"type": "string", "minLength": 1},
            "indicator": {"enum": ["info", "warning", "critical"]},
            "source": {"$ref": "#/components/schemas/Source"},
            "suggestions": {"type": "array", "minItems": 1, "items": {"$ref": "#/components/schemas/Suggestion"}},
            "selectionBehavior": {"enum": ["at-most-one", "any"]},
            "overrideReasons": {
                "type": "array",
                "minItems": 1,
                "items": {"$ref": "#/components/schemas/DisplayedCoding"},
            },
            "links": {"type": "array", "minItems": 1, "items": {"$ref": "#/components/schemas/Link"}},
        },
        "dependentRequired": {"suggestions": ["selectionBehavior"]},
    },
    "CdsServiceResponse": {
        "type": "object",
        "required": ["cards"],
        "properties": {
            "cards": {"type": "array", "items": {"$ref": "#/components/schemas/Card"}},
            "systemActions": {"type": "array", "minItems": 1, "items": {"$ref": "#/components/schemas/Action"}},
            "extension": {"type": "object"},
        },
    },
    "CdsService": {
        "type": "object",
        "required": ["hook", "description", "id"],
        "properties": {
            "hook": {"type": "string", "minLength": 1},
            "title": {"type": "string", "minLength": 1},
            "description": {"type": "string", "minLength": 1},
            "id": {"type": "string", "minLength": 1},
            "prefetch": {"type": "object", "additionalProperties": {"type": "string", "minLength": 1}},
            "usageRequirements": {"type": "string", "minLength": 1},
            "extension": {"type": "object"},
        },
    },
    "Discovery": {
        "type": "object",
        "required": ["services"],
        "properties": {"services": {"type": "array", "items": {"$ref": "#/components/schemas/CdsService"}}},
    },
    "Resource": {
        "type": "object",
        "required": ["resourceType"],
        "properties": {"resourceType": {"type": "string", "minLength": 1}},
    },
    "Bundle": {
        "type": "object",
        "required": ["resourceType"],
        "properties": {
            "resourceType": {"const": "Bundle"},
            "entry": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["resource"],
                    "properties": {"resource": {"$ref": "#/components/schemas/Resource"}},
                },
            },
        },
    },
}

def openapi_document(server_url: str | None = None) -> dict[str, Any]:
    schemas = copy.deepcopy(_SCHEMAS)
    # Request bodies: from the models that validate them (cds_service.models), so the two cannot drift.
    schemas.update(request_schemas())
    paths: dict[str, Any] = {
        "/cds-services": {
            "get": {
                "operationId": "discovery",
                "summary": "CDS Hooks discovery",
                "security": [],
                "responses": {
                    "200": {
                        "description": "The services of this CDS service",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Discovery"}}},
                    }
                },
            }
        },
        "/healthz": {
            "get": {
                "operationId": "health",
                "summary": "Liveness and the protocol version",
                "security": [],
                "responses": {
                    "200": {
                        "description": "The service is up",
                        "content": {"application/json": {"schema": {"type": "object", "required": ["status"]}}},
                    }
                },
            }
        },
        "/protocol": {
            "get": {
                "operationId": "protocol-page",
                "summary": "The protocol page: one anchor per rule (#rule-<id>), the target of every card's source.url",
                "security": [],
                "responses": {
                    "200": {"description": "HTML page", "content": {"text/html": {"schema": {"type": "string"}}}}
                },
            }
        },
    }
    service_ids = [s.id for s in SERVICES]
    for service in SERVICES:
        name = REQUEST_MODELS[service.hook].__name__
        paths[f"/cds-services/{service.id}"] = {
            "post": {
                "operationId": f"call-{service.id}",
                "summary": service.title,
                "description": service.description,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}},
                },
                "responses": {
                    "200": {
                        "description": "Cards (an empty array when there is no guidance)",
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/CdsServiceResponse"}}
                        },
                    },
                    "400": _error("The request is not a valid CDS Hooks request for this hook"),
                    "401": _UNAUTHORIZED,
                    "403": _error("fhirServer is not allowed for this client and the prefetch is incomplete"),
                    "404": _error("No such service"),
                    "412": _error("Required data is neither prefetched nor obtainable from fhirServer"),
                    "413": _error("The request body is too large"),
                    "415": _error("The request body is not JSON"),
                    "503": _error("A dependency (the store) is unavailable; retry later"),
                },
            }
        }
    paths["/cds-services/{service_id}/feedback"] = {
        "post": {
            "operationId": "feedback",
            "summary": "Feedback on cards",
            "parameters": [
                {"name": "service_id", "in": "path", "required": True, "schema": {"enum": service_ids}},
            ],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/FeedbackRequest"}}},
            },
            "responses": {
                "200": {
                    "description": "Feedback stored (idempotent)",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                "400": _error("The feedback body is not valid"),
                "401": _UNAUTHORIZED,
                "404": _error("No such service"),
                "413": _error("The request body is too large"),
                "415": _error("The request body is not JSON"),
                "503": _error("The feedback could not be stored; retry later"),
            },
        }
    }
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "Tarlatamab (IMDELLTRA) CDS Hooks service",
            "version": "2.0",
            "description": "CDS Hooks 2.0 service. Service and feedback calls need the client JWT "
            "(Authorization: Bearer) when trusted issuers are configured; discovery is open.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"clientJwt": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
        "security": [{"clientJwt": []}],
    }
    if server_url:
        document["servers"] = [{"url": server_url}]
    return document
