"""The Flask application factory."""

from __future__ import annotations

import logging
import traceback

from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException

from . import logsafe
from .client_auth import OpenAccess
from .engine import Engine
from .errors import ServiceError
from .http import discovery, hooks, openapi, protocol_page
from .http.common import error_response
from .services import discovery_document
from .settings import Settings
from .store import AuditWriter, Store, StoreUnavailable, recover_spools

log = logging.getLogger("cds_service")

_CORS_METHODS = "GET, POST, OPTIONS"
_CORS_HEADERS = "Authorization, Content-Type"


def create_app(
    settings: Settings | None = None, *, store: Store | None = None, announce_open_mode: bool = True
) -> Flask:
    """The WSGI app. `announce_open_mode=False` when the caller has printed the open-mode banner already."""
    settings = settings or Settings.from_env()
    logsafe.install()
    app = Flask(__name__)
    # Flask's own limit is a backstop; read_json_body answers 413 with an OperationOutcome first.
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes + 1
    app.json.sort_keys = False  # type: ignore[attr-defined]

    engine = Engine(settings)
    if store is None:
        store = Store(settings.effective_database_url)
        store.create_schema()
    app.extensions["cds_settings"] = settings
    app.extensions["cds_engine"] = engine
    app.extensions["cds_discovery"] = discovery_document(engine.protocol)
    app.extensions["cds_store"] = store
    app.extensions["cds_audit_writer"] = _audit_writer(settings, store)
    app.extensions["cds_auth"] = _client_auth(settings, store, announce_open_mode)

    app.register_blueprint(discovery.bp)
    app.register_blueprint(hooks.bp)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(protocol_page.bp)
    _install_cors(app, settings)
    _install_auth(app, settings)
    _install_error_handlers(app)
    return app


def _audit_writer(settings: Settings, store: Store) -> AuditWriter | None:
    """The worker's audit writer; the spools of workers that were killed are written first."""
    if not settings.audit_enabled:
        return None
    spool = settings.effective_audit_spool_dir
    try:
        recover_spools(spool, store)
    except (OSError, StoreUnavailable) as exc:
        log.error("audit spools in %s not recovered now (%s); retried when this worker first audits", spool, exc)
    return AuditWriter(store, linger=settings.audit_linger_seconds, spool=spool)


def _client_auth(settings: Settings, store: Store, announce_open_mode: bool) -> object:
    """Open development mode without trusted issuers; else every service and feedback call needs the JWT.

    A trusted-issuers file that cannot be read or is malformed stops the app here (IssuerConfigError).
    """
    if settings.trusted_issuers_file is None:
        if announce_open_mode:
            log.warning("open development mode: CDS client JWTs are not verified (CDS_TRUSTED_ISSUERS_FILE not set)")
        return OpenAccess()
    from .jwt_auth import JwtClientAuth

    return JwtClientAuth.from_settings(settings, store)


def _install_auth(app: Flask, settings: Settings) -> None:
    auth = app.extensions["cds_auth"]

    @app.before_request
    def authenticate() -> Response | None:
        # Discovery, health, the OpenAPI document and the CORS preflight stay open; everything under
        # /cds-services/ (service calls, feedback, and unknown ids: 401 before 404) needs the client JWT.
        if request.method == "OPTIONS" or not request.path.startswith("/cds-services/"):
            return None
        base = settings.public_base_url or request.host_url.rstrip("/")
        g.cds_client = auth.authenticate(request, base + request.path)  # type: ignore[attr-defined]
        return None


def _install_cors(app: Flask, settings: Settings) -> None:
    origins = settings.cors_origins

    def allow_origin() -> str | None:
        origin = request.headers.get("Origin")
        if "*" in origins:
            return "*"
        return origin if origin in origins else None

    @app.before_request
    def preflight() -> Response | None:
        if request.method != "OPTIONS":
            return None
        response = Response(status=204)
        return response

    @app.after_request
    def cors_headers(response: Response) -> Response:
        allowed = allow_origin()
        if allowed:
            response.headers["Access-Control-Allow-Origin"] = allowed
            response.headers["Access-Control-Allow-Methods"] = _CORS_METHODS
            response.headers["Access-Control-Allow-Headers"] = _CORS_HEADERS
            response.headers["Access-Control-Max-Age"] = "600"
            if allowed != "*":
                response.headers["Vary"] = "Origin"
        return response


def _install_error_handlers(app: Flask) -> None:
    @app.errorhandler(ServiceError)
    def service_error(error: ServiceError) -> Response:
        if error.status >= 500 or error.status == 412:
            log.warning("request %s %s -> %d: %s", request.method, request.path, error.status, error.summary)
        return error_response(error)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        status = error.code or 500
        messages = {
            404: "No such endpoint",
            405: f"Method {request.method} is not allowed here",
            413: "The request body is too large",
        }
        headers = {}
        if status == 405 and getattr(error, "valid_methods", None):
            headers["Allow"] = ", ".join(error.valid_methods)  # type: ignore[attr-defined]
        return error_response(ServiceError.single(status, messages.get(status, error.name), headers=headers))

    @app.errorhandler(Exception)
    def unexpected(error: Exception) -> Response:
        # The exception text may hold submitted values: log its type and where it arose, not its message.
        frames = "".join(traceback.format_tb(error.__traceback__))
        log.error("unhandled %s on %s %s\n%s", type(error).__name__, request.method, request.path, frames)
        return error_response(
            ServiceError.single(500, "Internal error; the request was not evaluated", code="exception")
        )
