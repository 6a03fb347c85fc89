"""Field types for connector config models: the rules many connectors share, defined once.

Each type is a pydantic ``Annotated`` type with a validator, so a config model states what a field
means (``directory: AbsolutePath = Field(description=...)``) and the JSON schema keeps the type,
default and description given on the field. Error messages do not repeat the field's name: pydantic
reports it as the error's location, and the API and CLI print it (``config.directory: ...``).

An optional field takes an ``Optional...`` type (or :data:`CaBundle`), never ``AbsolutePath | None``:
in that union pydantic cannot apply ``Field(max_length=...)`` to the string any more and checks the
length only after validation, with a vaguer message.

This module imports nothing but pydantic, so ``sslclm.spi`` stays importable on every agent platform.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, Field, SecretStr

PEM_CERTIFICATE_MARKER = "-----BEGIN CERTIFICATE-----"


def parse_mode(value: str, *, secret: bool) -> str:
    """An octal file mode such as ``0640``; a key's mode may never grant anything to others."""
    try:
        mode = int(value, 8)
    except ValueError:
        raise ValueError(f"'{value}' is not an octal file mode such as 0644") from None
    if not 0 <= mode <= 0o777:
        raise ValueError(f"'{value}' is not a file mode between 0000 and 0777")
    if secret and mode & 0o007:
        raise ValueError("a private key file may not be readable or writable by others")
    return value


def _file_mode(value: str) -> str:
    return parse_mode(value, secret=False)


def _secret_file_mode(value: str) -> str:
    return parse_mode(value, secret=True)


def _absolute_path(value: str) -> str:
    if not Path(value).is_absolute():
        raise ValueError("must be an absolute path")
    return value


def _or_none(check: Callable[[str], str]) -> Callable[[str | None], str | None]:
    def validate(value: str | None) -> str | None:
        return None if value is None else check(value)

    return validate


def _alias_template(value: str) -> str:
    # One "{" only: str.format must see {alias} and nothing else it could expand or choke on.
    if "{alias}" not in value or "/" in value or value.count("{") != 1:
        raise ValueError("a file name template holds {alias} once and no '/'")
    return value


def _alias_template_or_empty(value: str) -> str:
    return _alias_template(value) if value else value


def _non_empty_secret(value: SecretStr) -> SecretStr:
    if not value.get_secret_value():
        raise ValueError("must not be empty")
    return value


def _ca_bundle(value: str | None) -> str | None:
    if value is None or not value.strip():
        return None
    if PEM_CERTIFICATE_MARKER in value:
        return value
    if not Path(value).is_absolute():
        raise ValueError("must be an absolute path to a PEM file or PEM certificates")
    return value


def https_url(value: str) -> str:
    """``value`` if it is an ``https://`` URL with a host part and no white space; ValueError otherwise."""
    if not value.startswith("https://") or any(c.isspace() for c in value) or len(value) <= len("https://"):
        raise ValueError("must be an https:// URL without spaces")
    return value


def https_base_url(value: str) -> str:
    """An :func:`https_url` without trailing slashes, so API paths can be appended with ``/``."""
    return https_url(value).rstrip("/")


AbsolutePath = Annotated[str, AfterValidator(_absolute_path)]
"""An absolute file or directory path."""

OptionalAbsolutePath = Annotated[str | None, AfterValidator(_or_none(_absolute_path))]
"""An :data:`AbsolutePath` or None."""

FileMode = Annotated[str, AfterValidator(_file_mode)]
"""An octal file mode (``0644``) of a file that holds nothing secret."""

SecretFileMode = Annotated[str, AfterValidator(_secret_file_mode)]
"""An octal file mode of a file holding a private key: it may grant nothing to others."""

AliasTemplate = Annotated[str, AfterValidator(_alias_template)]
"""A file name made from an alias: holds ``{alias}`` once and no ``/``."""

AliasTemplateOrEmpty = Annotated[str, AfterValidator(_alias_template_or_empty)]
"""An :data:`AliasTemplate`, or empty where that file is optional and is then not written."""

NonEmptySecret = Annotated[SecretStr, AfterValidator(_non_empty_secret)]
"""A password or key that may not be the empty string."""

CaBundle = Annotated[str | None, AfterValidator(_ca_bundle)]
"""CA certificates to trust: PEM text or an absolute path to a PEM file; blank means none (None)."""

HttpsUrl = Annotated[str, AfterValidator(https_url)]
"""An ``https://`` URL used as given (e.g. an ACME directory)."""

HttpsBaseUrl = Annotated[str, AfterValidator(https_base_url)]
"""An ``https://`` base URL of an API, trailing slashes removed."""

OptionalHttpsBaseUrl = Annotated[str | None, AfterValidator(_or_none(https_base_url))]
"""An :data:`HttpsBaseUrl` or None."""

# Whole fields, description included, for settings that several gateways word the same way. Set the
# default on the field (``ca_bundle: ApiCaBundle = None``): pydantic refuses a default inside ``Annotated``.

# The length limit comes before the validator, which turns a blank value into None.
ApiCaBundle = Annotated[
    str | None,
    Field(
        max_length=200_000,
        description=(
            "CA certificates for the API's TLS certificate: a PEM file path or PEM text. "
            "Empty: the system trust store."
        ),
    ),
    AfterValidator(_ca_bundle),
]
"""The CA bundle a REST gateway trusts for its vendor's API."""

RateLimitWaitSeconds = Annotated[
    float,
    Field(
        ge=0,
        le=300,
        description="A rate-limited call waits up to this long (per Retry-After) and is tried again once.",
    ),
]
"""How long :class:`sslclm.spi.rest.Transport` may wait on one rate-limited call (``max_rate_limit_wait``)."""
