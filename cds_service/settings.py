"""Service settings: every `CDS_*` environment variable is read here, and only here (pydantic-settings).

Values are validated when the settings are built; a bad value stops the service at start with a one-line
message naming the variable (`SettingsError`), never a traceback or a silent default.
"""

from __future__ import annotations

import contextvars
import importlib.resources
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent

# The protocol and the card wording live in the repository's top-level `protocol/` and `cards/` folders (where a
# pharmacist edits them); the wheel carries them as these two data packages (see pyproject.toml).
PROTOCOL_PACKAGE = "cds_service.protocol_files"
CARDS_PACKAGE = "cds_service.card_files"


class SettingsError(ValueError):
    """A setting has a value the service cannot use; the message is one line naming the variable."""


def bundled_file(package: str, name: str, checkout_folder: str) -> Path:
    """An installed data file (importlib.resources), else the same file in the checkout (tests, development)."""
    try:
        candidate: Path | None = Path(str(importlib.resources.files(package) / name))
    except (ModuleNotFoundError, TypeError):
        candidate = None
    if candidate is not None and candidate.is_file():
        return candidate
    return REPO_ROOT / checkout_folder / name


def default_protocol_file() -> Path:
    return bundled_file(PROTOCOL_PACKAGE, "tarlatamab.yaml", "protocol")


def default_cards_dir() -> Path:
    return bundled_file(CARDS_PACKAGE, "common.yaml", "cards").parent


# `Settings.from_env(mapping)` reads a given mapping instead of os.environ (tests, tools).
_ENVIRON: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar("cds_environ", default=None)


class _EnvSource(EnvSettingsSource):
    def _load_env_vars(self) -> Mapping[str, str | None]:
        given = _ENVIRON.get()
        if given is None:
            return super()._load_env_vars()
        return {k.lower(): v for k, v in given.items() if v is not None and v.strip() != ""}


def _alias(field_name: str, env_name: str) -> AliasChoices:
    return AliasChoices(field_name, env_name)


CommaList = Annotated[tuple[str, ...], NoDecode]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
WorkerClass = Literal["gevent", "gthread", "sync"]


class Settings(BaseSettings):
    """Everything configurable about one service instance.

    `Settings()` reads the `CDS_*` environment (keyword arguments win); `Settings.from_env(mapping)` reads a
    mapping instead. Each field's variable is `CDS_` + the field name in capitals unless noted.
    """

    model_config = SettingsConfigDict(
        env_prefix="CDS_",
        case_sensitive=False,
        env_ignore_empty=True,
        extra="ignore",
        frozen=True,
        populate_by_name=True,
        validate_default=True,
    )

    data_dir: Path = Path("data")
    database_url: str | None = None  # None: SQLite file in data_dir
    protocol_file: Path = Field(default_factory=default_protocol_file)
    cards_dir: Path = Field(default_factory=default_cards_dir)
    # Outbound FHIR calls
    fhir_connect_timeout: float = Field(2.0, gt=0, le=60)
    fhir_total_timeout: float = Field(
        5.0, gt=0, le=120, validation_alias=_alias("fhir_total_timeout", "CDS_FHIR_TIMEOUT")
    )
    fhir_max_pages: int = Field(10, ge=1, le=1000)
    require_https_fhir: bool = False
    # Open development mode only (no trusted issuers): the fhirServer hosts the service may contact.
    # Loopback always; more with CDS_OPEN_MODE_FHIR_HOSTS (comma-separated host names).
    open_mode_fhir_hosts: CommaList = ()
    # Inbound requests
    max_request_bytes: int = Field(5 * 1024 * 1024, ge=100)
    max_json_depth: int = Field(64, ge=4, le=10000)
    cors_origins: CommaList = ("*",)
    # Client trust
    trusted_issuers_file: Path | None = None
    public_base_url: str | None = None
    jwt_algorithms: CommaList = ("ES384", "RS384")
    jwt_leeway_seconds: int = Field(60, ge=0, le=600)
    jwt_max_lifetime_seconds: int = Field(3600, ge=1, le=86400)
    jwks_cache_seconds: int = Field(300, ge=0)
    # Evaluation time: fixed for tests and replays; None = the clock
    now: datetime | None = None
    # The site's time zone (IANA name) for local dates shown to clinicians.
    site_timezone: str = "UTC"
    log_level: LogLevel = "INFO"
    audit_enabled: bool = True
    # Where each worker spools its queued audit entries until written (default: <data_dir>/audit-spool)
    audit_spool_dir: Path | None = None
    # How long the audit writer waits for more entries to write them in one batch
    audit_linger_seconds: float = Field(0.25, ge=0, le=60)
    # Per-worker cache of validation results by resource digest (0 turns it off)
    validation_cache_size: int = Field(20000, ge=0)
    # `cds-service serve` (gunicorn)
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    workers: int = Field(2, ge=1, le=64)
    threads: int = Field(8, ge=1, le=1000)  # gthread only
    worker_class: WorkerClass = "gevent"
    worker_timeout: int = Field(30, ge=1, le=3600)
    # 0: close each connection after its response, so that the next request goes to whichever worker is idle
    # (gevent workers keep a kept-alive connection for good: measured p99 237 ms with 5 s, 40 ms with 0).
    keepalive_seconds: int = Field(0, ge=0, le=300)
    access_log: bool = False
    forwarded_allow_ips: str = "127.0.0.1"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, _EnvSource(settings_cls))

    @field_validator("open_mode_fhir_hosts", "cors_origins", "jwt_algorithms", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(item.strip() for item in value.split(",") if item.strip())
        return value

    @field_validator("open_mode_fhir_hosts", mode="after")
    @classmethod
    def _lower_hosts(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(h.lower() for h in value)

    @field_validator("log_level", "worker_class", mode="before")
    @classmethod
    def _upper_or_lower(cls, value: Any, info: Any) -> Any:
        if isinstance(value, str):
            return value.strip().upper() if info.field_name == "log_level" else value.strip().lower()
        return value

    @field_validator("now", mode="before")
    @classmethod
    def _parse_now(cls, value: Any) -> Any:
        return parse_now(value) if isinstance(value, str) else value

    @field_validator("now", mode="after")
    @classmethod
    def _aware_now(cls, value: datetime | None) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value

    @field_validator("public_base_url", mode="after")
    @classmethod
    def _public_base(cls, value: str | None) -> str | None:
        if not value:
            return None
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an absolute http(s) URL, e.g. https://cds.example.org")
        if parts.username or parts.password or parts.query or parts.fragment:
            raise ValueError("must not carry credentials, a query or a fragment")
        return value.strip().rstrip("/")

    @field_validator("site_timezone", mode="after")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"not an IANA time zone name: {value!r}") from None
        return value

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise SettingsError(_one_line(exc)) from None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from `environ` (default: the process environment); keyword overrides win."""
        token = _ENVIRON.set(environ)
        try:
            return cls(**overrides)
        finally:
            _ENVIRON.reset(token)

    def with_overrides(self, **overrides: Any) -> Settings:
        values = {name: getattr(self, name) for name in type(self).model_fields}
        values.update(overrides)
        return type(self).from_env({}, **values)

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'cds-service.sqlite3').resolve()}"

    @property
    def effective_audit_spool_dir(self) -> Path:
        return self.audit_spool_dir if self.audit_spool_dir is not None else self.data_dir / "audit-spool"

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.site_timezone)

    def evaluation_time(self) -> datetime:
        """The time rules evaluate against: the fixed `now` if set, else the clock (UTC)."""
        return self.now if self.now is not None else datetime.now(UTC)


def env_name(field_name: str) -> str:
    """The environment variable that sets a field."""
    field = Settings.model_fields.get(field_name)
    alias = field.validation_alias if field is not None else None
    if isinstance(alias, AliasChoices):
        for choice in alias.choices:
            if isinstance(choice, str) and choice.isupper():
                return choice
    return f"CDS_{field_name.upper()}"


def _one_line(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors(include_url=False):
        loc = error.get("loc") or ("?",)
        name = env_name(str(loc[0]))
        message = str(error.get("msg", "invalid")).replace("Value error, ", "")
        given = error.get("input")
        shown = f" (got {given!r:.60})" if isinstance(given, (str, int, float)) and repr(given) not in message else ""
        problems.append(f"{name}: {message}{shown}")
    return "invalid setting " + "; ".join(problems).replace("\n", " ")


def parse_now(value: str) -> datetime:
    """Parse an ISO date or date-time; a value without a zone is taken as UTC."""
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValueError(f"not an ISO 8601 date-time: {value!r}") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed
