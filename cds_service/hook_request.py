"""The CDS Hooks request model: structure checks of the request body, before any data is gathered."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson

from .errors import ServiceError, bad_request
from .models import validate_hook_request
from .services import REQUIRED_CONTEXT, ServiceDef
from .settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HookRequest:
    service: ServiceDef
    hook_instance: str
    context: dict[str, Any]
    patient_id: str
    user_id: str
    fhir_server: str | None = None
    # The EHR's access token: transient, used only against fhir_server, never logged or stored.
    access_token: str | None = field(default=None, repr=False)
    prefetch: dict[str, Any] = field(default_factory=dict, repr=False)
    draft_entries: tuple[dict[str, Any], ...] = field(default=(), repr=False)  # draftOrders resources
    selections: tuple[str, ...] = ()

    @property
    def hook(self) -> str:
        return self.service.hook


_LEAVES = frozenset({str, int, float, bool, type(None)})
# Below this limit the walk recurses (bounded by the limit, ~3x faster than the explicit stack); above it, the
# explicit stack keeps hostile input from reaching Python's recursion limit.
_RECURSIVE_LIMIT = 128


def json_depth_exceeds(value: Any, limit: int) -> bool:
    """Whether a parsed JSON value nests deeper than `limit` (never recurses beyond `limit` levels)."""
    if not _container(value):
        return limit < 1
    if limit < 1:
        return True
    if _few_containers(value, limit):
        return False
    if limit <= _RECURSIVE_LIMIT:
        return _deeper(value, limit - 1)
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(node, dict):
            stack.extend((child, depth + 1) for child in node.values() if isinstance(child, (dict, list)))
        elif isinstance(node, list):
            stack.extend((child, depth + 1) for child in node if isinstance(child, (dict, list)))
    return False


def _few_containers(value: Any, limit: int) -> bool:
    """Whether `value` certainly holds no more than `limit` objects and arrays in all (so it cannot nest deeper),
    from its JSON text, written in C: every object or array opens with "{" or "[" (a bracket inside a string
    only raises the count). False when unsure (many containers, or a value orjson will not write): the walk decides.
    """
    try:
        text = orjson.dumps(value)
    except (orjson.JSONEncodeError, TypeError):
        return False
    return text.count(b"{") + text.count(b"[") <= limit


def _container(value: Any) -> bool:
    cls = value.__class__
    return cls is dict or cls is list or (cls not in _LEAVES and isinstance(value, (dict, list)))


def _deeper(node: Any, remaining: int) -> bool:
    """Whether a container has a container more than `remaining` levels below it."""
    for child in node.values() if isinstance(node, dict) else node:
        cls = child.__class__
        if cls in _LEAVES:
            continue
        if (cls is dict or cls is list or isinstance(child, (dict, list))) and (
            remaining == 0 or _deeper(child, remaining - 1)
        ):
            return True
    return False


def _require_string(container: dict[str, Any], key: str, path: str) -> str:
    value = container.get(key)
    if value is None:
        raise bad_request(f"Missing required field {path}", path, code="required")
    if not isinstance(value, str) or not value.strip():
        raise bad_request(f"{path} must be a non-empty string", path)
    return value


def parse_hook_request(body: Any, service: ServiceDef, settings: Settings) -> HookRequest:
    """Check a parsed request body against CDS Hooks 2.0 and the hook's context; 400 on any violation.

    The structure is checked by the hook's request model (`models`, which also writes the OpenAPI schema);
    the checks below add what needs the settings and pick the values out.
    """
    validate_hook_request(body, service.hook)
    hook = _require_string(body, "hook", "hook")
    hook_instance = _require_string(body, "hookInstance", "hookInstance")
    if hook != service.hook:
        raise bad_request(f"Service {service.id} answers only the {service.hook} hook", "hook", code="not-supported")
    context = body.get("context")
    if context is None:
        raise bad_request("Missing required field context", "context", code="required")
    if not isinstance(context, dict):
        raise bad_request("context must be a JSON object", "context")
    for name in REQUIRED_CONTEXT[service.hook]:
        if context.get(name) is None:
            raise bad_request(f"Missing required context field {name}", f"context.{name}", code="required")
    patient_id = _require_string(context, "patientId", "context.patientId")
    user_id = _require_string(context, "userId", "context.userId")
    if "encounterId" in context and not isinstance(context["encounterId"], str):
        raise bad_request("context.encounterId must be a string", "context.encounterId")

    fhir_server = body.get("fhirServer")
    if fhir_server is not None:
        fhir_server = _check_fhir_server(fhir_server, settings)
    access_token = _access_token(body.get("fhirAuthorization"), fhir_server)

    prefetch = body.get("prefetch")
    if prefetch is None:
        prefetch = {}
    elif not isinstance(prefetch, dict):
        raise bad_request("prefetch must be a JSON object", "prefetch")

    draft_entries: tuple[dict[str, Any], ...] = ()
    selections: tuple[str, ...] = ()
    if service.hook in ("order-select", "order-sign"):
        draft_entries = _draft_entries(context["draftOrders"])
    if service.hook == "order-select":
        raw = context["selections"]
        if not isinstance(raw, list) or not raw or not all(isinstance(s, str) and s for s in raw):
            raise bad_request("context.selections must be a non-empty array of strings", "context.selections")
        selections = tuple(raw)

    return HookRequest(
        service=service,
        hook_instance=hook_instance,
        context=context,
        patient_id=patient_id,
        user_id=user_id,
        fhir_server=fhir_server,
        access_token=access_token,
        prefetch=prefetch,
        draft_entries=draft_entries,
        selections=selections,
    )


def _check_fhir_server(value: Any, settings: Settings) -> str:
    if not isinstance(value, str) or not value.strip():
        raise bad_request("fhirServer must be a URL string", "fhirServer")
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise bad_request("fhirServer must be an absolute http(s) URL", "fhirServer")
    if settings.require_https_fhir and parts.scheme != "https":
        raise bad_request("fhirServer must use https", "fhirServer")
    if parts.username or parts.password:
        raise bad_request("fhirServer must not carry credentials", "fhirServer")
    return value.strip().rstrip("/")


def _access_token(auth: Any, fhir_server: str | None) -> str | None:
    if auth is None:
        return None
    if not isinstance(auth, dict):
        raise bad_request("fhirAuthorization must be a JSON object", "fhirAuthorization")
    if fhir_server is None:
        raise bad_request("fhirAuthorization requires fhirServer", "fhirServer", code="required")
    token = auth.get("access_token")
    if not isinstance(token, str) or not token:
        raise bad_request("fhirAuthorization.access_token must be a non-empty string", "fhirAuthorization.access_token")
    token_type = auth.get("token_type")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise bad_request("fhirAuthorization.token_type must be Bearer", "fhirAuthorization.token_type")
    for key, kind in (("expires_in", int), ("scope", str), ("subject", str), ("patient", str)):
        if key in auth and (not isinstance(auth[key], kind) or isinstance(auth[key], bool)):
            raise bad_request(f"fhirAuthorization.{key} has the wrong type", f"fhirAuthorization.{key}")
    return token


def _draft_entries(draft_orders: Any) -> tuple[dict[str, Any], ...]:
    if not isinstance(draft_orders, dict) or draft_orders.get("resourceType") != "Bundle":
        raise bad_request("context.draftOrders must be a FHIR Bundle", "context.draftOrders")
    entries = draft_orders.get("entry", [])
    if entries is None:
        entries = []
    if not isinstance(entries, list):
        raise bad_request("context.draftOrders.entry must be an array", "context.draftOrders.entry")
    resources = []
    for i, entry in enumerate(entries):
        path = f"context.draftOrders.entry[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("resource"), dict):
            raise bad_request(f"{path}.resource must be a FHIR resource", f"{path}.resource")
        resource = entry["resource"]
        if not isinstance(resource.get("resourceType"), str):
            raise bad_request(f"{path}.resource has no resourceType", f"{path}.resource.resourceType")
        resources.append(resource)
    return tuple(resources)


# Nothing the service reads may nest deeper than this, anywhere (resources included): every recursive walk of
# request data (validation, repr in a message, the rules' readers) then stays far inside Python's recursion limit.
HARD_DEPTH_LIMIT = 254
# What a part nested beyond the limit is replaced with: a string where an object or array was, which the
# readers treat as any malformed value (a data-quality card, or a 400 naming the element of a draft).
PRUNED = "[nested deeper than 254 levels: not read]"


def _raise_for_hard_depth(body: Any) -> None:
    """Cut what nests beyond HARD_DEPTH_LIMIT levels (rare, hostile: checked in C first, ~1 ms for 2 MB).

    The request is not refused for it: a prefetched resource with a 1000-deep birthDate yields a data-quality
    card and a tarlatamab draft still gets its cards, as for any other malformed value; the request's own
    structure is still held to `CDS_MAX_JSON_DEPTH` (400) after this.
    """
    if nests_too_deep(body):
        prune_deep(body, HARD_DEPTH_LIMIT)
        log.warning("the request nests deeper than %d levels; the deeper parts were not read", HARD_DEPTH_LIMIT)


def prune_deep(value: Any, limit: int = HARD_DEPTH_LIMIT) -> Any:
    """Replace, in place, every object or array deeper than `limit` levels with PRUNED (iterative, no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)] if isinstance(value, (dict, list)) else []
    while stack:
        node, depth = stack.pop()
        keys = list(node) if isinstance(node, dict) else range(len(node))
        for key in keys:
            child = node[key]
            if isinstance(child, (dict, list)):
                if depth + 1 > limit:
                    node[key] = PRUNED
                else:
                    stack.append((child, depth + 1))
    return value


def nests_too_deep(value: Any) -> bool:
    """Whether parsed JSON nests beyond HARD_DEPTH_LIMIT levels (checked in C by orjson's encoder)."""
    if not isinstance(value, (dict, list)):
        return False
    try:
        orjson.dumps(value)
    except orjson.JSONEncodeError as exc:
        return "recursion" in str(exc).lower()
    return False


def raise_for_depth(body: Any, settings: Settings) -> None:
    """400 when the request's own structure (outside the FHIR resources it carries) nests beyond the limit.

    The FHIR resources inside `context.draftOrders` and `prefetch` are not walked here (that would cost more
    than parsing them): orjson refuses nesting beyond its own limits while parsing, and every resource the
    service recurses into is depth-checked before it is validated (`fhir_validation`); the others are only
    read with flat dict look-ups.
    """
    _raise_for_hard_depth(body)
    limit = settings.max_json_depth
    if not isinstance(body, dict):
        return
    shallow = {k: v for k, v in body.items() if k not in ("prefetch", "context")}
    context = body.get("context")
    if isinstance(context, dict):
        draft_orders = context.get("draftOrders")
        shallow["context"] = {
            **context,
            "draftOrders": (
                {k: v for k, v in draft_orders.items() if k != "entry"}
                if isinstance(draft_orders, dict)
                else draft_orders
            ),
        }
    else:
        shallow["context"] = context
    prefetch = body.get("prefetch")
    shallow["prefetch"] = list(prefetch) if isinstance(prefetch, dict) else prefetch
    if json_depth_exceeds(shallow, limit):
        raise ServiceError.single(400, f"The request nests JSON deeper than {limit} levels", code="too-costly")
