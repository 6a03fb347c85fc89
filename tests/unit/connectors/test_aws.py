"""The AWS stores' pure parts: inventory cursors, AWS error codes to platform errors, secret values."""

from __future__ import annotations

import json
from typing import Any

import pytest
from botocore.exceptions import ClientError

from sslclm.connectors.aws.client import map_client_error
from sslclm.connectors.aws.paging import Position, decode_cursor, encode_cursor, next_position
from sslclm.connectors.aws.secrets_manager import SecretsManagerConfig, parse_value, render_value
from sslclm.errors import ConnectorError, InvalidInputError, NotFoundError
from sslclm.spi.testing import new_store_material


def client_error(code: str, message: str = "", status: int = 400) -> ClientError:
    response: Any = {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, "Operation")


@pytest.mark.parametrize(
    ("position", "returned", "page_items", "next_token", "expected"),
    [
        (Position(), 2, 2, None, None),
        (Position(), 2, 2, "t1", Position("t1", 0)),
        (Position(), 2, 5, "t1", Position(None, 2)),  # a server that ignored MaxItems
        (Position(None, 4), 1, 5, None, None),
        (Position("t1", 2), 2, 5, "t2", Position("t1", 4)),
    ],
)
def test_next_position(
    position: Position, returned: int, page_items: int, next_token: str | None, expected: Position | None
) -> None:
    assert next_position(position, returned, page_items, next_token) == expected


def test_cursor_round_trip_and_garbage() -> None:
    assert decode_cursor(encode_cursor(Position("abc", 3))) == Position("abc", 3)
    assert decode_cursor(None) == Position()
    with pytest.raises(InvalidInputError):
        decode_cursor("not a cursor")


@pytest.mark.parametrize(
    ("error", "kind", "retryable", "named"),
    [
        (
            client_error("UnrecognizedClientException", "bad token"),
            ConnectorError,
            False,
            "refused the credentials",
        ),
        (client_error("AccessDeniedException", "no", 400), ConnectorError, False, "AccessDeniedException"),
        (
            client_error(
                "403",
                "<ErrorResponse><Error><Code>InvalidClientTokenId</Code><Message>x</Message></Error>",
                403,
            ),
            ConnectorError,
            False,
            "InvalidClientTokenId",
        ),
        (client_error("ThrottlingException", "slow down"), ConnectorError, True, "ThrottlingException"),
        (client_error("InternalFailure", "", 500), ConnectorError, True, "could not"),
        (client_error("ResourceNotFoundException", "gone"), NotFoundError, None, "gone"),
        (client_error("ValidationException", "bad key"), ConnectorError, False, "refused to"),
    ],
)
def test_error_mapping(error: ClientError, kind: type[Exception], retryable: bool | None, named: str) -> None:
    mapped = map_client_error("import www", error)
    assert isinstance(mapped, kind)
    if retryable is not None:
        assert isinstance(mapped, ConnectorError) and mapped.retryable is retryable
    assert named in str(mapped)


def test_secret_values_in_both_formats() -> None:
    cert, chain, key = new_store_material()
    for value_format in ("json", "pem-bundle"):
        config = SecretsManagerConfig(region="eu-west-1", value_format=value_format)
        value = render_value(config, cert, chain[0], key)
        assert parse_value(value) == (cert, chain, True)
    without_key = render_value(SecretsManagerConfig(region="eu-west-1"), cert, b"", None)
    assert "private_key" not in json.loads(without_key)
    assert parse_value(without_key) == (cert, (), False)
    assert parse_value("hunter2") is None
    assert parse_value("{not json") is None


def test_secret_names_from_the_template() -> None:
    config = SecretsManagerConfig(region="eu-west-1", secret_name="tls/{alias}.pem")
    assert config.name_for("www") == "tls/www.pem"
    assert config.alias_of("tls/www.pem") == "www"
    assert config.alias_of("tls/.pem") is None
    assert config.alias_of("other/www.pem") is None
    with pytest.raises(InvalidInputError):
        config.name_for("../x")
