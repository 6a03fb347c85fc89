"""What both AWS stores share: the connection settings, the boto3 client and the error mapping.

Every boto3 call goes through :func:`aws_call`, which turns botocore's exceptions into the platform's
errors: refused credentials are final (retrying with the same keys cannot help), throttling and an
unreachable endpoint are worth retrying later.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import boto3
import botocore.exceptions
from botocore.config import Config as BotocoreConfig
from pydantic import Field, SecretStr, field_validator, model_validator

from sslclm.errors import ConnectorError, InvalidInputError, NotFoundError
from sslclm.spi.base import ConnectorConfig
from sslclm.spi.files import split_certificates

T = TypeVar("T")

ALIAS_TAG = "sslclm:alias"
MANAGED_BY_TAG = "sslclm:managed-by"

# Error codes that mean "these credentials (or this role) are not accepted": final, not transient.
CREDENTIAL_CODES = frozenset(
    {
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "InvalidSignatureException",
        "SignatureDoesNotMatch",
        "AccessDenied",
        "AccessDeniedException",
        "ExpiredToken",
        "ExpiredTokenException",
        "UnauthorizedOperation",
        "AuthFailure",
    }
)
THROTTLING_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "SlowDown",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "InternalFailure",
        "InternalServiceError",
        "InternalServiceErrorException",
        "RequestTimeout",
        "RequestTimeoutException",
    }
)
NOT_FOUND_CODES = frozenset({"ResourceNotFoundException"})
_EMBEDDED_CODE = re.compile(r"<Code>([A-Za-z.]+)</Code>")
_EMBEDDED_MESSAGE = re.compile(r"<Message>([^<]*)</Message>")
_PEM_KEY = re.compile(rb"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----")


class AwsConnectionConfig(ConnectorConfig):
    """Where and as whom to call AWS; shared by the ACM and Secrets Manager stores."""

    region: str = Field(description="AWS region, e.g. eu-west-1")
    endpoint_url: str | None = Field(
        None, description="Service endpoint to use instead of the public one (VPC endpoint, test server)"
    )
    access_key_id: SecretStr | None = Field(
        None, description="Access key id; empty: the default credential chain (environment, profile, role)"
    )
    secret_access_key: SecretStr | None = Field(None, description="Secret access key of access_key_id")
    role_arn: str | None = Field(None, description="IAM role to assume (sts:AssumeRole) before every session")
    external_id: SecretStr | None = Field(None, description="External id the role's trust policy asks for")
    role_session_name: str = Field("sslclm", max_length=64, description="Session name of the assumed role")
    tags: dict[str, str] = Field(
        default_factory=dict, description="Tags applied to every certificate or secret the store writes"
    )
    connect_timeout: float = Field(5.0, gt=0, le=300, description="Seconds to open a connection")
    read_timeout: float = Field(30.0, gt=0, le=600, description="Seconds to wait for an answer")
    max_attempts: int = Field(
        3, ge=1, le=10, description="Attempts per call, including botocore's own retries with backoff"
    )
    page_size: int = Field(100, ge=1, le=1000, description="Items asked for per listing call")

    @field_validator("region")
    @classmethod
    def _region(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z]{2}(-[a-z]+)+-\d+", value):
            raise ValueError("not an AWS region name (e.g. eu-west-1)")
        return value

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("the endpoint must be an http:// or https:// URL")
        return value or None

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: dict[str, str]) -> dict[str, str]:
        for key, tag_value in value.items():
            if not key or len(key) > 128 or len(tag_value) > 256:
                raise ValueError("tag keys are 1-128 characters, values at most 256")
            if key.startswith(("aws:", "sslclm:")):
                raise ValueError(f"tag key '{key}' uses a reserved prefix (aws:, sslclm:)")
        return value

    @model_validator(mode="after")
    def _key_pair(self) -> AwsConnectionConfig:
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("give both access_key_id and secret_access_key, or neither")
        return self


class AwsClients:
    """boto3 clients built once per connector instance (building one costs milliseconds of CPU).

    A boto3 client is safe to share between threads; the session that creates it is not, hence the lock.
    """

    def __init__(self, config: AwsConnectionConfig) -> None:
        self._config = config
        self._lock = threading.Lock()
        self._clients: dict[str, Any] = {}

    def _session(self) -> boto3.session.Session:
        config = self._config
        session = boto3.session.Session(
            aws_access_key_id=config.access_key_id.get_secret_value() if config.access_key_id else None,
            aws_secret_access_key=(
                config.secret_access_key.get_secret_value() if config.secret_access_key else None
            ),
            region_name=config.region,
        )
        if config.role_arn is None:
            return session
        sts = session.client("sts", endpoint_url=config.endpoint_url, config=self._botocore_config())
        ask: dict[str, Any] = {"RoleArn": config.role_arn, "RoleSessionName": config.role_session_name}
        if config.external_id is not None:
            ask["ExternalId"] = config.external_id.get_secret_value()
        credentials = aws_call(f"assume role {config.role_arn}", lambda: sts.assume_role(**ask))[
            "Credentials"
        ]
        return boto3.session.Session(
            aws_access_key_id=credentials["AccessKeyId"],
            aws_secret_access_key=credentials["SecretAccessKey"],
            aws_session_token=credentials["SessionToken"],
            region_name=config.region,
        )

    def _botocore_config(self) -> BotocoreConfig:
        return BotocoreConfig(
            connect_timeout=self._config.connect_timeout,
            read_timeout=self._config.read_timeout,
            retries={"max_attempts": self._config.max_attempts, "mode": "standard"},
            max_pool_connections=32,
        )

    def client(self, service: str) -> Any:
        """The client for ``service``; an assumed role's credentials are fetched with the first one."""
        with self._lock:
            client = self._clients.get(service)
            if client is None:
                # Any: the stubs type each service's client separately; the stores keep answers as dicts.
                session: Any = self._session()
                client = session.client(
                    service, endpoint_url=self._config.endpoint_url, config=self._botocore_config()
                )
                self._clients[service] = client
            return client

    def forget(self) -> None:
        """Drop the clients, so the next call assumes the role again (its credentials expired)."""
        with self._lock:
            self._clients.clear()


def error_code(exc: botocore.exceptions.ClientError) -> tuple[str, str]:
    """The AWS error code and message; some servers put an XML error inside a JSON protocol's body."""
    error = exc.response.get("Error", {})
    code, message = str(error.get("Code", "")), str(error.get("Message", ""))
    embedded = _EMBEDDED_CODE.search(message)
    if embedded is not None:
        code = embedded.group(1)
        text = _EMBEDDED_MESSAGE.search(message)
        message = text.group(1) if text else ""
    return code, message


def map_client_error(action: str, exc: botocore.exceptions.ClientError) -> Exception:
    code, message = error_code(exc)
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    detail = f"{code}: {message}" if message else code
    if code in CREDENTIAL_CODES or (status in (401, 403) and code not in THROTTLING_CODES):
        return ConnectorError(
            f"AWS refused the credentials to {action} ({detail})", retryable=False, aws_code=code
        )
    if code in NOT_FOUND_CODES:
        return NotFoundError(f"cannot {action}: {detail}", field="alias")
    if code in THROTTLING_CODES or status >= 500:
        return ConnectorError(f"AWS could not {action} now ({detail})", retryable=True, aws_code=code)
    return ConnectorError(f"AWS refused to {action} ({detail})", retryable=False, aws_code=code)


def aws_call(action: str, call: Callable[[], T]) -> T:
    """Runs one boto3 call; ``action`` says what it was for in the error message ("import www")."""
    try:
        return call()
    except botocore.exceptions.ClientError as exc:
        raise map_client_error(action, exc) from None
    except (botocore.exceptions.NoCredentialsError, botocore.exceptions.PartialCredentialsError):
        raise ConnectorError(
            f"cannot {action}: no AWS credentials are configured or found in the default chain",
            retryable=False,
        ) from None
    except (botocore.exceptions.ConnectTimeoutError, botocore.exceptions.ReadTimeoutError) as exc:
        raise ConnectorError(f"cannot {action}: AWS timed out ({exc})", retryable=True) from None
    except botocore.exceptions.EndpointConnectionError as exc:
        raise ConnectorError(f"cannot {action}: {exc}", retryable=True) from None
    except botocore.exceptions.ConnectionError as exc:
        raise ConnectorError(f"cannot {action}: connection failed ({exc})", retryable=True) from None
    except botocore.exceptions.ParamValidationError as exc:
        raise InvalidInputError(f"cannot {action}: {exc}") from None


def check_material(certificate_pem: bytes, private_key_pem: bytes | None, *, key_required: bool) -> bytes:
    """The one PEM leaf certificate of an add request; refuses what AWS would refuse, before calling it."""
    leaf = split_certificates(certificate_pem)
    if len(leaf) != 1:
        raise InvalidInputError(
            "certificate_pem must hold exactly one PEM certificate", field="certificate_pem"
        )
    if key_required and not private_key_pem:
        raise InvalidInputError("this store needs the private key; none was given", field="private_key_pem")
    if private_key_pem is not None and not _PEM_KEY.search(private_key_pem):
        raise InvalidInputError("private_key_pem is not a PEM private key", field="private_key_pem")
    return leaf[0]


def tag_list(config: AwsConnectionConfig, alias: str) -> list[dict[str, str]]:
    """The tags every entry gets: the operator's, the alias (how an alias finds its entry) and ours."""
    tags = {**config.tags, ALIAS_TAG: alias, MANAGED_BY_TAG: "sslclm"}
    return [{"Key": key, "Value": value} for key, value in tags.items()]
