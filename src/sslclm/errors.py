"""One root error for the whole platform.

Every error carries the HTTP status the API answers with and structured data that names
the input at fault. The API maps them in one place (``sslclm.api.errors``); services never
raise HTTP exceptions themselves.
"""

from __future__ import annotations

from typing import Any, ClassVar


class SslClmError(Exception):
    """An error inside SSL-CLM."""

    http_status: ClassVar[int] = 500
    code: ClassVar[str] = "internal-error"

    def __init__(self, message: str | None = None, *, field: str | None = None, **data: Any) -> None:
        self.message = message or (self.__doc__ or self.__class__.__name__).strip().splitlines()[0]
        self.field = field
        self.data = data
        super().__init__(self.message)

    def to_problem(self) -> dict[str, Any]:
        """The error as an RFC 9457 problem body."""
        body: dict[str, Any] = {
            "type": f"https://sslclm.dev/problems/{self.code}",
            "title": self.code.replace("-", " "),
            "status": self.http_status,
            "detail": self.message,
        }
        if self.field:
            body["field"] = self.field
        if self.data:
            body["data"] = self.data
        return body


class InvalidInputError(SslClmError):
    """The input is invalid."""

    http_status = 422
    code = "invalid-input"


class CertificateFormatError(InvalidInputError):
    """The data is not a certificate in any supported format."""

    code = "certificate-format"


class WrongPasswordError(InvalidInputError):
    """The password does not open this keystore."""

    code = "wrong-password"


class NotFoundError(SslClmError):
    """The requested object does not exist."""

    http_status = 404
    code = "not-found"


class ConflictError(SslClmError):
    """The request conflicts with the current state."""

    http_status = 409
    code = "conflict"


class AuthenticationError(SslClmError):
    """Authentication is required."""

    http_status = 401
    code = "unauthenticated"


class TooManyAttemptsError(SslClmError):
    """Too many failed attempts; try again later."""

    http_status = 429
    code = "too-many-attempts"


class PermissionDeniedError(SslClmError):
    """Your role does not allow this action."""

    http_status = 403
    code = "forbidden"


class NotSupportedError(SslClmError):
    """The connector does not support this capability."""

    http_status = 501
    code = "not-supported"


class ConfigurationError(SslClmError):
    """The platform is misconfigured."""

    http_status = 500
    code = "configuration"


class IntegrityError(SslClmError):
    """Stored data failed an integrity check."""

    http_status = 500
    code = "integrity"


class ConnectorError(SslClmError):
    """The connector's remote system failed the request."""

    http_status = 502
    code = "connector"
    # Whether trying the same call again later may succeed; a job retries only retryable errors.
    retryable: bool = True

    def __init__(
        self,
        message: str | None = None,
        *,
        retryable: bool | None = None,
        field: str | None = None,
        **data: Any,
    ) -> None:
        super().__init__(message, field=field, **data)
        if retryable is not None:
            self.retryable = retryable


class CARejectedError(ConnectorError):
    """The certificate authority rejected the request."""

    http_status = 422
    code = "ca-rejected"
    retryable = False


class CAUnavailableError(ConnectorError):
    """The certificate authority cannot be reached or is not answering."""

    http_status = 503
    code = "ca-unavailable"
    retryable = True


class ConnectorLoadError(SslClmError):
    """A connector could not be loaded."""

    http_status = 500
    code = "connector-load"
