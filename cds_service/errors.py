"""Request errors and their FHIR OperationOutcome bodies.

Error bodies say what was wrong and where (a FHIRPath-like expression), never the submitted values:
those may be patient data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# FHIR issue-type codes (http://hl7.org/fhir/issue-type) by HTTP status, when the raiser gives none.
_DEFAULT_ISSUE_CODE = {
    400: "invalid",
    401: "login",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    412: "not-found",
    413: "too-costly",
    415: "not-supported",
    500: "exception",
    503: "transient",
}


@dataclass(frozen=True)
class Issue:
    diagnostics: str
    code: str = "invalid"
    severity: str = "error"
    expression: tuple[str, ...] = ()

    def as_fhir(self) -> dict[str, object]:
        issue: dict[str, object] = {
            "severity": self.severity,
            "code": self.code,
            "diagnostics": self.diagnostics,
        }
        if self.expression:
            issue["expression"] = list(self.expression)
        return issue


@dataclass
class ServiceError(Exception):
    """An error that ends a request with `status` and an OperationOutcome body."""

    status: int
    issues: list[Issue] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.summary)

    @classmethod
    def single(
        cls,
        status: int,
        diagnostics: str,
        *,
        code: str | None = None,
        expression: str | tuple[str, ...] | None = None,
        headers: dict[str, str] | None = None,
    ) -> ServiceError:
        if isinstance(expression, str):
            expression = (expression,)
        issue = Issue(
            diagnostics=diagnostics,
            code=code or _DEFAULT_ISSUE_CODE.get(status, "processing"),
            expression=expression or (),
        )
        return cls(status=status, issues=[issue], headers=headers or {})

    @property
    def summary(self) -> str:
        return "; ".join(i.diagnostics for i in self.issues) or f"HTTP {self.status}"

    def operation_outcome(self) -> dict[str, object]:
        return operation_outcome(self.issues)


def operation_outcome(issues: list[Issue]) -> dict[str, object]:
    if not issues:
        issues = [Issue(diagnostics="Unknown error", code="exception")]
    return {"resourceType": "OperationOutcome", "issue": [i.as_fhir() for i in issues]}


def bad_request(diagnostics: str, expression: str | None = None, code: str = "invalid") -> ServiceError:
    return ServiceError.single(400, diagnostics, code=code, expression=expression)
