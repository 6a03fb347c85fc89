"""The shared config field types: what each accepts, how it normalises, and what its errors say."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import Field, SecretStr, ValidationError

from sslclm.spi import (
    AbsolutePath,
    AliasTemplate,
    AliasTemplateOrEmpty,
    ApiCaBundle,
    CaBundle,
    ConnectorConfig,
    FileMode,
    HttpsBaseUrl,
    HttpsUrl,
    NonEmptySecret,
    OptionalAbsolutePath,
    OptionalHttpsBaseUrl,
    RateLimitWaitSeconds,
    SecretFileMode,
)
from sslclm.spi.files import parse_mode

PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


class Sample(ConnectorConfig):
    path: AbsolutePath = "/srv"
    optional_path: OptionalAbsolutePath = Field(None, max_length=10)
    mode: FileMode = "0644"
    key_mode: SecretFileMode = "0600"
    template: AliasTemplate = "{alias}.pem"
    optional_template: AliasTemplateOrEmpty = ""
    password: NonEmptySecret = SecretStr("pw")
    ca_bundle: CaBundle = Field(None, max_length=200)
    url: HttpsUrl = "https://ca.example/directory"
    base_url: HttpsBaseUrl = Field("https://api.example", description="Where the API lives.")
    optional_base_url: OptionalHttpsBaseUrl = Field(None, max_length=30)
    api_ca_bundle: ApiCaBundle = None
    rate_limit_wait: RateLimitWaitSeconds = 10.0


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("path", "/etc/ssl", "/etc/ssl"),
        ("optional_path", None, None),
        ("optional_path", "/run/x.pid", "/run/x.pid"),
        ("mode", "0755", "0755"),
        ("key_mode", "0640", "0640"),
        ("template", "cert-{alias}.pem", "cert-{alias}.pem"),
        ("optional_template", "", ""),
        ("optional_template", "{alias}.key", "{alias}.key"),
        ("ca_bundle", None, None),
        ("ca_bundle", "   ", None),
        ("ca_bundle", PEM, PEM),
        ("ca_bundle", "/etc/ssl/ca.pem", "/etc/ssl/ca.pem"),
        ("url", "https://ca.example/dir/", "https://ca.example/dir/"),
        ("base_url", "https://api.example/v2//", "https://api.example/v2"),
        ("optional_base_url", None, None),
        ("optional_base_url", "https://m.example/", "https://m.example"),
        ("api_ca_bundle", "", None),
        ("api_ca_bundle", "/etc/ssl/api-ca.pem", "/etc/ssl/api-ca.pem"),
        ("rate_limit_wait", 0, 0.0),
    ],
)
def test_good_values_are_kept_or_normalised(field: str, value: Any, expected: Any) -> None:
    assert getattr(Sample.model_validate({field: value}), field) == expected


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("path", "relative/dir", "must be an absolute path"),
        ("path", "", "must be an absolute path"),
        ("optional_path", "etc/x", "must be an absolute path"),
        ("optional_path", "/" + "x" * 10, "String should have at most 10 characters"),
        ("mode", "rw-r--r--", "'rw-r--r--' is not an octal file mode such as 0644"),
        ("mode", "1000", "'1000' is not a file mode between 0000 and 0777"),
        ("key_mode", "0604", "a private key file may not be readable or writable by others"),
        ("template", "fixed.pem", "a file name template holds {alias} once and no '/'"),
        ("template", "{alias}/cert.pem", "a file name template holds {alias} once and no '/'"),
        ("template", "{alias}{alias}", "a file name template holds {alias} once and no '/'"),
        ("optional_template", "{x}{alias}", "a file name template holds {alias} once and no '/'"),
        ("password", "", "must not be empty"),
        ("ca_bundle", "ca.pem", "must be an absolute path to a PEM file or PEM certificates"),
        ("ca_bundle", "/" + "x" * 200, "String should have at most 200 characters"),
        ("url", "http://ca.example", "must be an https:// URL without spaces"),
        ("url", "https://", "must be an https:// URL without spaces"),
        ("base_url", "https://api example", "must be an https:// URL without spaces"),
        ("optional_base_url", "ftp://m.example", "must be an https:// URL without spaces"),
        ("optional_base_url", "https://" + "m" * 30, "String should have at most 30 characters"),
        ("api_ca_bundle", "relative.pem", "must be an absolute path to a PEM file or PEM certificates"),
        ("api_ca_bundle", "/" + "x" * 200_000, "String should have at most 200000 characters"),
        ("rate_limit_wait", 301, "less than or equal to 300"),
    ],
)
def test_bad_values_are_refused_naming_the_field(field: str, value: Any, message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Sample.model_validate({field: value})
    (error,) = caught.value.errors()
    assert error["loc"] == (field,)
    assert message in error["msg"]


def test_the_schema_keeps_type_default_and_description() -> None:
    properties = Sample.model_json_schema()["properties"]
    assert properties["base_url"] == {
        "default": "https://api.example",
        "description": "Where the API lives.",
        "title": "Base Url",
        "type": "string",
    }
    assert properties["password"]["writeOnly"] is True
    assert properties["ca_bundle"]["anyOf"] == [{"maxLength": 200, "type": "string"}, {"type": "null"}]
    assert properties["api_ca_bundle"]["description"].startswith("CA certificates for the API's TLS")
    assert properties["rate_limit_wait"]["maximum"] == 300


def test_parse_mode_is_still_importable_from_files() -> None:
    assert parse_mode("0600", secret=True) == "0600"
