"""The ACME gateway's settings, as an operator fills them in (the JSON schema drives the UI form)."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from sslclm.spi import CaBundle, ConnectorConfig, HttpsUrl, OptionalAbsolutePath, OptionalHttpsBaseUrl

_EMAIL = re.compile(r"^[^@\s,:]+@[^@\s,:]+\.[^@\s,:]+$")
_DNS_NAME = re.compile(r"^(?:[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9_-]{1,63}\.?$")
_HOST_PORT = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^\s:\[\]]+))(?::(?P<port>\d{1,5}))?$")

TsigAlgorithm = Literal[
    "hmac-sha256", "hmac-sha384", "hmac-sha512", "hmac-sha224", "hmac-sha1", "hmac-md5.sig-alg.reg.int"
]


def split_host_port(value: str, default_port: int) -> tuple[str, int]:
    """``host``, ``host:port`` or ``[v6]:port`` → (host, port); ValueError when malformed."""
    match = _HOST_PORT.match(value.strip())
    if match is None:
        raise ValueError(f"{value!r} is not host, host:port or [IPv6]:port")
    port = int(match.group("port")) if match.group("port") else default_port
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is out of range")
    return match.group("v6") or match.group("host"), port


class Http01Config(ConnectorConfig):
    """How http-01 challenges are answered."""

    mode: Literal["responder", "webroot"] = Field(
        default="responder",
        description=(
            "'responder': SSL-CLM's own web server answers /.well-known/acme-challenge/ (route port 80 "
            "of every name to it); 'webroot': token files are written under a web server's document root."
        ),
    )
    webroot: OptionalAbsolutePath = Field(
        default=None,
        max_length=4096,
        description="Absolute document root for 'webroot' mode; files go to .well-known/acme-challenge.",
    )

    @model_validator(mode="after")
    def _webroot_needed(self) -> Http01Config:
        if self.mode == "webroot" and not self.webroot:
            raise ValueError("webroot mode needs the webroot directory")
        return self


class Rfc2136Config(ConnectorConfig):
    """Publish dns-01 TXT records by RFC 2136 dynamic update, authenticated with TSIG."""

    kind: Literal["rfc2136"] = "rfc2136"
    server: str = Field(min_length=1, max_length=255, description="Primary DNS server (name or IP address).")
    port: int = Field(default=53, ge=1, le=65535)
    zone: str = Field(min_length=1, max_length=255, description="The zone to update, e.g. example.com.")
    tsig_key_name: str = Field(min_length=1, max_length=255, description="TSIG key name, e.g. acme-update.")
    tsig_secret: SecretStr = Field(description="TSIG key secret (base64, as in the server's key file).")
    tsig_algorithm: TsigAlgorithm = "hmac-sha256"
    ttl: int = Field(default=60, ge=1, le=86400, description="TTL of the challenge TXT records.")
    timeout_seconds: float = Field(default=10.0, gt=0, le=300)

    @field_validator("zone", "tsig_key_name")
    @classmethod
    def _dns_name(cls, value: str) -> str:
        if not _DNS_NAME.match(value):
            raise ValueError("must be a DNS name")
        return value.rstrip(".").lower() + "."

    @field_validator("tsig_secret")
    @classmethod
    def _base64(cls, value: SecretStr) -> SecretStr:
        try:
            decoded = base64.b64decode(value.get_secret_value(), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("must be base64") from None
        if not decoded:
            raise ValueError("must not be empty")
        return value


class HookConfig(ConnectorConfig):
    """Publish dns-01 TXT records with a script: ``<command...> add|remove <record name> <value>``."""

    kind: Literal["hook"] = "hook"
    command: tuple[str, ...] = Field(
        min_length=1,
        max_length=32,
        description="Program and leading arguments; the action, record name and value are appended.",
    )
    timeout_seconds: float = Field(default=120.0, gt=0, le=3600)

    @field_validator("command")
    @classmethod
    def _program(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value[0].strip():
            raise ValueError("the first element must name the program")
        return value


class Dns01Config(ConnectorConfig):
    """How dns-01 challenges are published, and how long to wait until resolvers see them."""

    provider: Annotated[Rfc2136Config | HookConfig, Field(discriminator="kind")]
    propagation_delay_seconds: float = Field(
        default=0.0, ge=0, le=3600, description="Fixed wait after publishing, before checking."
    )
    propagation_timeout_seconds: float = Field(
        default=120.0, gt=0, le=7200, description="Give up when the records are not visible after this long."
    )
    propagation_poll_seconds: float = Field(default=2.0, gt=0, le=300)
    check_nameservers: tuple[str, ...] = Field(
        default=(),
        max_length=16,
        description=(
            "Name servers (host or host:port) that must answer the TXT record before the CA is asked to "
            "validate. Empty: the RFC 2136 server, or no check for a hook."
        ),
    )

    @field_validator("check_nameservers")
    @classmethod
    def _host_ports(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            split_host_port(item, 53)
        return value


class AcmeConfig(ConnectorConfig):
    directory_url: HttpsUrl = Field(
        max_length=2000, description="The ACME server's directory URL, e.g. https://acme.example/directory."
    )
    contact_emails: tuple[str, ...] = Field(
        default=(), max_length=10, description="Contact addresses registered with the account."
    )
    terms_of_service_agreed: bool = Field(
        default=False,
        description="Agree to the CA's terms of service when registering (check() shows their URL).",
    )
    eab_kid: str | None = Field(
        default=None, max_length=1000, description="External account binding key identifier."
    )
    eab_hmac_key: SecretStr | None = Field(
        default=None, description="External account binding HMAC key (base64url, as the CA hands it out)."
    )
    eab_hmac_algorithm: Literal["HS256", "HS384", "HS512"] = "HS256"
    ca_bundle: CaBundle = Field(
        default=None,
        max_length=200_000,
        description=(
            "CA certificates that sign the ACME server's TLS certificate: an absolute path to a PEM file, "
            "or the PEM text. Empty: the system trust store."
        ),
    )
    challenge: Literal["http-01", "dns-01"] = "http-01"
    http01: Http01Config = Field(default_factory=Http01Config)
    dns01: Dns01Config | None = None
    management_url: OptionalHttpsBaseUrl = Field(
        default=None,
        max_length=2000,
        description=(
            "Base URL of a Pebble-style management API; when set, get_chain reads roots/0 and "
            "intermediates/0 there instead of the chain of the last order."
        ),
    )
    request_timeout_seconds: int = Field(default=30, ge=1, le=600)
    order_timeout_seconds: float = Field(
        default=300.0,
        gt=0,
        le=86400,
        description="How long one issue() waits for validation and issuance; a retry resumes the order.",
    )
    poll_interval_seconds: float = Field(default=1.0, gt=0, le=300)

    @field_validator("contact_emails")
    @classmethod
    def _emails(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for email in value:
            if not _EMAIL.match(email):
                raise ValueError(f"{email!r} is not an email address")
        return value

    @field_validator("eab_hmac_key")
    @classmethod
    def _base64url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        raw = value.get_secret_value().strip()
        try:
            decoded = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
        except (binascii.Error, ValueError):
            raise ValueError("must be base64url") from None
        if not decoded:
            raise ValueError("must not be empty")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> AcmeConfig:
        if (self.eab_kid is None) != (self.eab_hmac_key is None):
            raise ValueError("external account binding needs both eab_kid and eab_hmac_key")
        if self.challenge == "dns-01" and self.dns01 is None:
            raise ValueError("the dns-01 challenge needs the dns01 settings")
        return self
