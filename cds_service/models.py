"""Request bodies as pydantic models: the one definition that both validates requests and writes the OpenAPI
document's request schemas (`request_schemas()`), so the two cannot drift apart.

Structure and types are checked here (strictly: no coercion); what needs the service's state (the allow-list
of FHIR servers, https-only, the protocol's view of a draft) is checked afterwards by `hook_request`.
Unknown members are allowed everywhere, as CDS Hooks requires.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import bad_request

# RFC 3339 section 5.6 date-time in UTC ("Z" or a zero offset), e.g. 1985-04-12T23:20:50.52Z.
RFC3339_UTC = r"^(\d{4}-\d{2}-\d{2})[Tt](\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?(?:[Zz]|[+-]00:00)$"
# Text the store keeps: no NUL (PostgreSQL refuses it), at least one visible character where required.
_NO_NUL = r"^[^\x00]*$"
_VISIBLE_NO_NUL = r"^[^\x00]*[^\x00\s][^\x00]*$"

_HTTP_URL = r"^\s*[Hh][Tt][Tt][Pp][Ss]?://"

NonEmpty = Annotated[StrictStr, Field(min_length=1)]


def _stored(max_length: int | None = None, *, visible: bool = False) -> Any:
    return Annotated[StrictStr, Field(pattern=_VISIBLE_NO_NUL if visible else _NO_NUL, max_length=max_length)]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, frozen=True)


# --- hook calls -------------------------------------------------------------------------------------------
class RequestResource(_Open):
    resourceType: NonEmpty


class BundleEntry(_Open):
    resource: RequestResource


class DraftOrders(_Open):
    resourceType: Literal["Bundle"]
    entry: list[BundleEntry] | None = None


class FhirAuthorization(_Open):
    access_token: NonEmpty
    token_type: Annotated[StrictStr, Field(pattern=r"^[Bb][Ee][Aa][Rr][Ee][Rr]$")]
    expires_in: StrictInt | None = None
    scope: StrictStr | None = None
    subject: StrictStr | None = None
    patient: StrictStr | None = None


class Context(_Open):
    userId: NonEmpty
    patientId: NonEmpty
    encounterId: StrictStr | None = None


class PatientViewContext(Context):
    pass


class OrderSignContext(Context):
    draftOrders: DraftOrders


class OrderSelectContext(Context):
    draftOrders: DraftOrders
    selections: Annotated[list[NonEmpty], Field(min_length=1)]


class _HookRequest(_Open):
    hookInstance: NonEmpty
    fhirServer: Annotated[StrictStr, Field(pattern=_HTTP_URL, json_schema_extra={"format": "uri"})] | None = None
    fhirAuthorization: FhirAuthorization | None = None
    # Prefetched data of any shape: what is not a usable resource becomes a data-quality card, not a 400.
    prefetch: dict[str, Any] | None = None
    extension: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _token_needs_server(self) -> _HookRequest:
        if self.fhirAuthorization is not None and self.fhirServer is None:
            raise ValueError("@fhirServer fhirAuthorization requires fhirServer")
        return self


class PatientViewRequest(_HookRequest):
    hook: Literal["patient-view"]
    context: PatientViewContext


class OrderSignRequest(_HookRequest):
    hook: Literal["order-sign"]
    context: OrderSignContext


class OrderSelectRequest(_HookRequest):
    hook: Literal["order-select"]
    context: OrderSelectContext


REQUEST_MODELS: dict[str, type[_HookRequest]] = {
    "patient-view": PatientViewRequest,
    "order-sign": OrderSignRequest,
    "order-select": OrderSelectRequest,
}


# --- feedback -----------------------------------------------------------------------------------------------
class OverrideCoding(_Open):
    code: _stored(100)  # type: ignore[valid-type]
    system: _stored(300) | None = None  # type: ignore[valid-type]
    display: _stored(500) | None = None  # type: ignore[valid-type]


class OverrideReason(_Open):
    reason: OverrideCoding | None = None
    userComment: _stored() | None = None  # type: ignore[valid-type]


class AcceptedSuggestion(_Open):
    id: _stored(visible=True)  # type: ignore[valid-type]


class Feedback(_Open):
    model_config = ConfigDict(
        json_schema_extra={
            "if": {"properties": {"outcome": {"const": "accepted"}}, "required": ["outcome"]},
            "then": {"required": ["acceptedSuggestions"]},
        }
    )

    card: _stored(100, visible=True)  # type: ignore[valid-type]
    outcome: Literal["accepted", "overridden"]
    outcomeTimestamp: Annotated[StrictStr, Field(pattern=RFC3339_UTC, json_schema_extra={"format": "date-time"})]
    acceptedSuggestions: Annotated[list[AcceptedSuggestion], Field(min_length=1)] | None = None
    overrideReason: OverrideReason | None = None

    @field_validator("outcomeTimestamp")
    @classmethod
    def _real_instant(cls, value: str) -> str:
        date_part, time_part = value[:10], value[11:19]
        try:
            datetime.fromisoformat(f"{date_part}T{time_part}")
        except ValueError:
            raise ValueError("is not a valid date-time") from None
        return value

    @model_validator(mode="after")
    def _accepted_names_suggestions(self) -> Feedback:
        if self.outcome == "accepted" and not self.acceptedSuggestions:
            raise ValueError("@acceptedSuggestions acceptedSuggestions is required for accepted outcomes")
        return self


class FeedbackRequest(_Open):
    feedback: Annotated[list[Feedback], Field(min_length=1)]


# --- validation and schemas ---------------------------------------------------------------------------------
def location(loc: tuple[Any, ...]) -> str:
    """A pydantic error location as a FHIRPath-like expression: context.draftOrders.entry[0].resource."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and not part.startswith(("function-", "literal[")):
            out += f".{part}" if out else part
    return out or "$"


_CODES = {"missing": "required", "literal_error": "not-supported", "string_too_long": "too-long"}


M = TypeVar("M", bound=BaseModel)


def validate(model: type[M], body: Any) -> M:
    """The body as `model`, or a 400 (OperationOutcome) naming the first problem and where it is."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False, include_context=False)
        first = errors[0]
        loc = tuple(first["loc"])
        message = str(first["msg"]).removeprefix("Value error, ")
        if message.startswith("@"):  # a model validator names the field it is about: "@field message"
            field, _, message = message[1:].partition(" ")
            loc = (*loc, field)
        where = location(loc)
        if first["type"] == "string_pattern_mismatch":
            message = "has characters or a form that is not allowed (NUL, blank, or not the documented format)"
        summary = f"Missing required field {where}" if first["type"] == "missing" else f"{where}: {message}"
        raise bad_request(summary, where, code=_CODES.get(first["type"], "invalid")) from None


def validate_hook_request(body: Any, hook: str) -> _HookRequest:
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object", "$")
    return validate(REQUEST_MODELS[hook], body)


def request_schemas() -> dict[str, dict[str, Any]]:
    """The OpenAPI component schemas of every request body (one per hook, and feedback), with their parts."""
    schemas: dict[str, dict[str, Any]] = {}
    for model in (*REQUEST_MODELS.values(), FeedbackRequest):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}", mode="validation")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return schemas


