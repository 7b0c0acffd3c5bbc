"""Service settings, read from `CDS_*` environment variables with safe defaults."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

REPO_ROOT = Path(__file__).resolve().parent.parent


def _default_path(env_relative: str) -> Path:
    return REPO_ROOT / env_relative


@dataclass(frozen=True)
class Settings:
    """Everything configurable about one service instance. Build with `Settings.from_env()`."""

    data_dir: Path = field(default_factory=lambda: Path("data"))
    database_url: str | None = None  # None: SQLite file in data_dir
    protocol_file: Path = field(default_factory=lambda: _default_path("protocol/tarlatamab.yaml"))
    cards_dir: Path = field(default_factory=lambda: _default_path("cards"))
    # Outbound FHIR calls
    fhir_connect_timeout: float = 2.0
    fhir_total_timeout: float = 5.0
    fhir_max_pages: int = 10
    require_https_fhir: bool = False
    # Inbound requests
    max_request_bytes: int = 5 * 1024 * 1024
    max_json_depth: int = 64
    cors_origins: tuple[str, ...] = ("*",)
    # Client trust (issue 4)
    trusted_issuers_file: Path | None = None
    public_base_url: str | None = None
    jwt_algorithms: tuple[str, ...] = ("ES384", "RS384")
    jwt_leeway_seconds: int = 60
    jwt_max_lifetime_seconds: int = 3600
    jwks_cache_seconds: int = 300
    # Evaluation time: fixed for tests and replays; None = the clock
    now: datetime | None = None
    log_level: str = "INFO"
    audit_enabled: bool = True
    # Per-worker cache of validation results by resource digest (0 turns it off)
    validation_cache_size: int = 20000
    # The site's time zone (IANA name): the evaluation time's local date, the planned date of an untimed order
    site_timezone: str = "UTC"

    def __post_init__(self) -> None:
        for name in ("data_dir", "protocol_file", "cards_dir", "trusted_issuers_file"):
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, Path(value))
        _check_timezone(self.site_timezone)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}

        def text(name: str) -> str | None:
            raw = env.get(name)
            return raw.strip() if raw is not None and raw.strip() != "" else None

        if (v := text("CDS_DATA_DIR")) is not None:
            values["data_dir"] = Path(v)
        if (v := text("CDS_DATABASE_URL")) is not None:
            values["database_url"] = v
        if (v := text("CDS_PROTOCOL_FILE")) is not None:
            values["protocol_file"] = Path(v)
        if (v := text("CDS_CARDS_DIR")) is not None:
            values["cards_dir"] = Path(v)
        for name, key, conv in (
            ("CDS_FHIR_CONNECT_TIMEOUT", "fhir_connect_timeout", float),
            ("CDS_FHIR_TIMEOUT", "fhir_total_timeout", float),
            ("CDS_FHIR_MAX_PAGES", "fhir_max_pages", int),
            ("CDS_MAX_REQUEST_BYTES", "max_request_bytes", int),
            ("CDS_MAX_JSON_DEPTH", "max_json_depth", int),
            ("CDS_JWT_LEEWAY_SECONDS", "jwt_leeway_seconds", int),
            ("CDS_JWT_MAX_LIFETIME_SECONDS", "jwt_max_lifetime_seconds", int),
            ("CDS_JWKS_CACHE_SECONDS", "jwks_cache_seconds", int),
            ("CDS_VALIDATION_CACHE_SIZE", "validation_cache_size", int),
        ):
            if (v := text(name)) is not None:
                try:
                    values[key] = conv(v)
                except ValueError as exc:
                    raise ValueError(f"{name} must be a number, got {v!r}") from exc
        if (v := text("CDS_REQUIRE_HTTPS_FHIR")) is not None:
            values["require_https_fhir"] = _flag(v, "CDS_REQUIRE_HTTPS_FHIR")
        if (v := text("CDS_AUDIT_ENABLED")) is not None:
            values["audit_enabled"] = _flag(v, "CDS_AUDIT_ENABLED")
        if (v := text("CDS_CORS_ORIGINS")) is not None:
            values["cors_origins"] = tuple(o.strip() for o in v.split(",") if o.strip())
        if (v := text("CDS_TRUSTED_ISSUERS_FILE")) is not None:
            values["trusted_issuers_file"] = Path(v)
        if (v := text("CDS_PUBLIC_BASE_URL")) is not None:
            values["public_base_url"] = v.rstrip("/")
        if (v := text("CDS_JWT_ALGORITHMS")) is not None:
            values["jwt_algorithms"] = tuple(a.strip() for a in v.split(",") if a.strip())
        if (v := text("CDS_NOW")) is not None:
            values["now"] = parse_now(v)
        if (v := text("CDS_SITE_TIMEZONE")) is not None:
            values["site_timezone"] = v
        if (v := text("CDS_LOG_LEVEL")) is not None:
            values["log_level"] = v.upper()
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]

    def with_overrides(self, **overrides: object) -> Settings:
        return replace(self, **overrides)  # type: ignore[arg-type]

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'cds-service.sqlite3').resolve()}"

    def evaluation_time(self) -> datetime:
        """The time rules evaluate against: the fixed `now` if set, else the clock (UTC)."""
        return self.now if self.now is not None else datetime.now(UTC)


def _check_timezone(name: str) -> None:
    """CDS_SITE_TIMEZONE must be an IANA time zone name ("UTC", "America/Chicago")."""
    if name.strip().upper() == "UTC":
        return
    try:
        ZoneInfo(name.strip())
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"CDS_SITE_TIMEZONE must be an IANA time zone name, got {name!r}") from exc


def _flag(value: str, name: str) -> bool:
    lowered = value.lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"{name} must be true or false, got {value!r}")


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
