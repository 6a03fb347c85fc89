"""Checking requested names: syntax, and the profile's allowed patterns."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence

from sslclm.errors import InvalidInputError

LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def normalize_dns_name(name: str) -> str:
    value = name.strip().lower().rstrip(".")
    try:
        ascii_name = (
            value.encode("idna").decode()
            if not value.startswith("*.")
            else "*." + value[2:].encode("idna").decode()
        )
    except UnicodeError:
        raise InvalidInputError(f"'{name}' is not a valid DNS name", field="dns_names") from None
    labels = ascii_name.split(".")
    body = labels[1:] if labels[0] == "*" else labels
    if len(ascii_name) > 253 or len(labels) < 2 or not all(LABEL.match(label) for label in body):
        raise InvalidInputError(f"'{name}' is not a valid DNS name", field="dns_names")
    return ascii_name


def normalize_ip(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        raise InvalidInputError(f"'{value}' is not an IP address", field="ip_addresses") from None


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    # "*" stands for exactly one DNS label, so "*.example.com" does not also allow "a.b.example.com";
    # "**" stands for one or more labels.
    parts = []
    for token in re.split(r"(\*\*|\*)", pattern.lower()):
        if token == "**":
            parts.append(r"(?:[a-z0-9-]+\.)*[a-z0-9-]+")
        elif token == "*":
            parts.append(r"[a-z0-9*-]+")
        else:
            parts.append(re.escape(token))
    return re.compile("^" + "".join(parts) + "$")


def disallowed_names(
    dns_names: Sequence[str], ip_addresses: Sequence[str], allowed: Sequence[str]
) -> list[str]:
    """Names the profile's patterns do not allow (every name is allowed when there are no patterns)."""
    if not allowed:
        return []
    dns_patterns = [_pattern_regex(p) for p in allowed if "/" not in p]
    networks = []
    for pattern in allowed:
        if "/" in pattern:
            networks.append(ipaddress.ip_network(pattern, strict=False))
    refused = [n for n in dns_names if not any(p.match(n) for p in dns_patterns)]
    for ip in ip_addresses:
        address = ipaddress.ip_address(ip)
        if not any(address.version == net.version and address in net for net in networks):
            refused.append(ip)
    return refused


def check_allowed(
    dns_names: Sequence[str], ip_addresses: Sequence[str], allowed: Sequence[str], profile: str
) -> None:
    refused = disallowed_names(dns_names, ip_addresses, allowed)
    if refused:
        raise InvalidInputError(
            f"profile '{profile}' does not allow: {', '.join(refused)} (allowed: {', '.join(allowed)})",
            field="dns_names",
            refused=refused,
        )


def validate_patterns(patterns: Sequence[str]) -> list[str]:
    cleaned = []
    for pattern in patterns:
        value = pattern.strip().lower()
        if not value:
            continue
        if "/" in value:
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError:
                raise InvalidInputError(f"'{pattern}' is not a network", field="allowed_names") from None
        elif not re.fullmatch(r"[a-z0-9*.-]+", value):
            raise InvalidInputError(f"'{pattern}' is not a name pattern", field="allowed_names")
        cleaned.append(value)
    return cleaned
