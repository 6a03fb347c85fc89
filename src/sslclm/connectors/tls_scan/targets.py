"""Target specs → endpoints, lazily.

A target token is one of::

    example.com            www.example.com:443,8443        192.0.2.10        192.0.2.10:8443
    2001:db8::1            [2001:db8::1]:443               10.0.0.0/24       [2001:db8::/120]:443
    192.0.2.1-192.0.2.20   192.0.2.1-20                    2001:db8::1-ff
    smtp://mail.example.com:587                            www.example.com,api.example.com@192.0.2.10

A ``scheme://`` prefix forces the protocol (otherwise it follows the port: 25 and 587 speak SMTP,
143 IMAP, ...). Names before ``@`` are extra SNI names for that target; every target is also
scanned with its own name (a hostname) or with no SNI at all (an address), so the default
certificate is always seen.

Address sets are kept as merged integer intervals per family with the exclusions already cut out,
so a /8 costs a few integers: the exact endpoint count is known before anything is scanned and the
endpoints themselves are produced one at a time.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from sslclm.connectors.tls_scan.results import Protocol, ScanTarget, protocol_for_port
from sslclm.errors import InvalidInputError

__all__ = ["DEFAULT_MAX_TARGETS", "DEFAULT_PORTS", "TargetSet", "TargetSpec", "parse_ports", "parse_targets"]

DEFAULT_MAX_TARGETS = 1 << 20
DEFAULT_PORTS: tuple[int, ...] = (443,)

_SCHEMES: dict[str, Protocol] = {p.value: p for p in Protocol} | {"https": Protocol.TLS}
_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")
_PORT_TOKEN = re.compile(r"^(\d{1,5})(?:-(\d{1,5}))?$")
_SHORT_V4_END = re.compile(r"^\d{1,3}$")
_SHORT_V6_END = re.compile(r"^[0-9a-fA-F]{1,4}$")

Interval = tuple[int, int]  # inclusive bounds


@dataclass(frozen=True, slots=True)
class TargetSpec:
    """One target with its own settings, for callers that hold structured input (API, config).

    ``ports`` replaces the scan-wide ports for this target; ``sni`` adds names to the scan-wide
    ones; ``protocol`` replaces the per-port default.
    """

    target: str
    ports: tuple[int, ...] | None = None
    sni: tuple[str, ...] = ()
    protocol: Protocol | None = None


@dataclass(frozen=True, slots=True)
class _GroupKey:
    family: int
    ports: tuple[int, ...]
    names: tuple[str | None, ...]
    protocol: Protocol | None


@dataclass(frozen=True, slots=True)
class _Group:
    key: _GroupKey
    intervals: tuple[Interval, ...]

    @property
    def size(self) -> int:
        addresses = sum(hi - lo + 1 for lo, hi in self.intervals)
        return addresses * len(self.key.ports) * len(self.key.names)


@dataclass(frozen=True, slots=True)
class _HostTarget:
    host: str
    ports: tuple[int, ...]
    names: tuple[str | None, ...]
    protocol: Protocol | None

    @property
    def size(self) -> int:
        return len(self.ports) * len(self.names)


class TargetSet:
    """The expanded target set: its exact size up front, its endpoints on demand.

    Iteration goes port by port across all addresses of a block, so consecutive endpoints are on
    different hosts and per-host limits rarely make the scanner wait.
    """

    def __init__(self, groups: Iterable[_Group], hosts: Iterable[_HostTarget]) -> None:
        self._groups = tuple(groups)
        self._hosts = tuple(hosts)
        self.count = sum(g.size for g in self._groups) + sum(h.size for h in self._hosts)

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[ScanTarget]:
        for host in self._hosts:
            for port in host.ports:
                protocol = host.protocol or protocol_for_port(port)
                for name in host.names:
                    yield ScanTarget(host.host, port, name, protocol)
        for group in self._groups:
            to_text = _format_v4 if group.key.family == 4 else _format_v6
            for port in group.key.ports:
                protocol = group.key.protocol or protocol_for_port(port)
                for lo, hi in group.intervals:
                    for value in range(lo, hi + 1):
                        address = to_text(value)
                        for name in group.key.names:
                            yield ScanTarget(address, port, name, protocol)


def parse_ports(spec: str | int | Iterable[int | str], *, field: str = "ports") -> tuple[int, ...]:
    """``"443,8443,9000-9010"`` (or ints) → ports in the order given, duplicates dropped."""
    if isinstance(spec, int):
        tokens: list[str] = [str(spec)]
    elif isinstance(spec, str):
        tokens = spec.split(",")
    else:
        tokens = [str(item) for item in spec]
    ports: dict[int, None] = {}
    for raw in tokens:
        token = raw.strip()
        match = _PORT_TOKEN.match(token)
        if match is None:
            raise InvalidInputError(
                f"invalid port {token!r}: expected a number or a range like 9000-9010",
                field=field,
                token=token,
            )
        lo = int(match.group(1))
        hi = int(match.group(2)) if match.group(2) else lo
        if not (1 <= lo <= 65535 and 1 <= hi <= 65535):
            raise InvalidInputError(f"invalid port {token!r}: ports are 1-65535", field=field, token=token)
        if hi < lo:
            raise InvalidInputError(
                f"invalid port range {token!r}: the end is below the start", field=field, token=token
            )
        for port in range(lo, hi + 1):
            ports[port] = None
    if not ports:
        raise InvalidInputError("no ports given", field=field)
    return tuple(ports)


def parse_targets(
    targets: Iterable[str | TargetSpec],
    *,
    ports: str | int | Iterable[int | str] = DEFAULT_PORTS,
    exclude: Iterable[str] = (),
    sni: Iterable[str] = (),
    protocol: Protocol | str | None = None,
    max_targets: int = DEFAULT_MAX_TARGETS,
) -> TargetSet:
    """Parse target specs into a :class:`TargetSet`.

    ``exclude`` takes addresses, CIDR blocks, ranges and hostnames; ``sni`` names are added to
    every target; ``protocol`` (a :class:`Protocol` value or ``"auto"``) overrides the per-port
    default. Raises :class:`InvalidInputError` naming the first bad token, or when the set expands
    to more than ``max_targets`` endpoints.
    """
    default_ports = parse_ports(ports)
    scan_protocol = _parse_protocol(protocol)
    extra_names = tuple(_parse_name(name, field="sni") for name in sni)
    excluded_hosts, excluded = _parse_exclusions(exclude)

    blocks: dict[_GroupKey, list[Interval]] = {}
    hosts: dict[_HostTarget, None] = {}
    seen_any = False
    for item in targets:
        seen_any = True
        spec = item if isinstance(item, TargetSpec) else TargetSpec(item)
        parsed = _parse_token(spec.target)
        if spec.ports is not None:
            target_ports = parse_ports(spec.ports, field="targets")
        else:
            target_ports = parsed.ports or default_ports
        names = (*parsed.names, *(_parse_name(n, field="targets") for n in spec.sni), *extra_names)
        target_protocol = spec.protocol or parsed.protocol or scan_protocol
        if parsed.hostname is not None:
            if parsed.hostname in excluded_hosts:
                continue
            all_names = _unique((parsed.hostname, *names))
            hosts[_HostTarget(parsed.hostname, target_ports, all_names, target_protocol)] = None
        else:
            assert parsed.family is not None and parsed.interval is not None
            key = _GroupKey(parsed.family, target_ports, _unique((None, *names)), target_protocol)
            blocks.setdefault(key, []).append(parsed.interval)
    if not seen_any:
        raise InvalidInputError("no targets given", field="targets")

    groups = []
    for key, intervals in blocks.items():
        remaining = _subtract(_merge(intervals), excluded.get(key.family, []))
        if remaining:
            groups.append(_Group(key, tuple(remaining)))
    target_set = TargetSet(groups, hosts)
    if target_set.count > max_targets:
        raise InvalidInputError(
            f"the targets expand to {target_set.count:,} endpoints, more than the limit of {max_targets:,}; "
            "narrow the ranges, add exclusions or raise the limit",
            field="targets",
            count=target_set.count,
            limit=max_targets,
        )
    if target_set.count == 0:
        raise InvalidInputError("the exclusions remove every target", field="exclude")
    return target_set


@dataclass(frozen=True, slots=True)
class _Parsed:
    hostname: str | None = None
    family: int | None = None
    interval: Interval | None = None
    ports: tuple[int, ...] | None = None
    names: tuple[str, ...] = ()
    protocol: Protocol | None = None


def _parse_token(raw: str) -> _Parsed:
    token = raw.strip()
    if not token:
        raise InvalidInputError("empty target", field="targets", token=raw)
    try:
        return _parse_token_parts(token)
    except InvalidInputError:
        raise
    except ValueError as exc:
        raise InvalidInputError(f"invalid target {token!r}: {exc}", field="targets", token=token) from exc


def _parse_token_parts(token: str) -> _Parsed:
    protocol: Protocol | None = None
    rest = token
    if "://" in rest:
        scheme, rest = rest.split("://", 1)
        if scheme.lower() not in _SCHEMES:
            raise ValueError(f"unknown scheme {scheme!r} (known: {', '.join(sorted(_SCHEMES))})")
        protocol = _SCHEMES[scheme.lower()]
    names: tuple[str, ...] = ()
    if "@" in rest:
        name_part, rest = rest.split("@", 1)
        names = tuple(_parse_name(n, field="targets") for n in name_part.split(",") if n.strip())
        if not names:
            raise ValueError("no SNI name before '@'")
    host, ports = _split_port(rest)
    address_set = _parse_address_set(host)
    if address_set is not None:
        family, interval = address_set
        return _Parsed(family=family, interval=interval, ports=ports, names=names, protocol=protocol)
    return _Parsed(hostname=_parse_name(host, field="targets"), ports=ports, names=names, protocol=protocol)


def _split_port(text: str) -> tuple[str, tuple[int, ...] | None]:
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError("missing ']'")
        host, tail = text[1:end], text[end + 1 :]
        if not tail:
            return host, None
        if not tail.startswith(":"):
            raise ValueError("expected ':PORTS' after ']'")
        return host, parse_ports(tail[1:], field="targets")
    if text.count(":") == 1:
        host, port_text = text.split(":")
        return host, parse_ports(port_text, field="targets")
    return text, None  # no colon, or a bare IPv6 form (which cannot carry ports unbracketed)


def _parse_address_set(text: str) -> tuple[int, Interval] | None:
    """An address, CIDR block or range → (family, interval); ``None`` when it is a hostname."""
    if "/" in text:
        network = ipaddress.ip_network(text, strict=False)
        return network.version, (int(network.network_address), int(network.broadcast_address))
    if "-" in text:
        start_text, end_text = text.split("-", 1)
        try:
            start = ipaddress.ip_address(start_text)
        except ValueError:
            return None  # a hostname with a dash
        end = _range_end(start, end_text)
        if int(end) < int(start):
            raise ValueError("the end of the range is below its start")
        return start.version, (int(start), int(end))
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        if ":" in text:
            raise ValueError("not a valid IPv6 address") from None
        return None
    return address.version, (int(address), int(address))


def _range_end(
    start: ipaddress.IPv4Address | ipaddress.IPv6Address, text: str
) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if start.version == 4 and _SHORT_V4_END.match(text):
        last = int(text)
        if last > 255:
            raise ValueError(f"range end {text!r} is not an octet")
        return ipaddress.IPv4Address((int(start) & ~0xFF) | last)
    if start.version == 6 and _SHORT_V6_END.match(text) and ":" not in text:
        return ipaddress.IPv6Address((int(start) & ~0xFFFF) | int(text, 16))
    end = ipaddress.ip_address(text)
    if end.version != start.version:
        raise ValueError("a range cannot mix IPv4 and IPv6")
    return end


def _parse_name(raw: str, *, field: str) -> str:
    """A DNS name, lower-cased, IDNA-encoded, without a trailing dot."""
    name = raw.strip().rstrip(".").lower()
    try:
        ipaddress.ip_address(name)
    except ValueError:
        pass
    else:
        raise InvalidInputError(
            f"invalid name {raw!r}: an IP address cannot be an SNI name", field=field, token=raw
        )
    try:
        ascii_name = name.encode("idna").decode("ascii") if not name.isascii() else name
    except UnicodeError as exc:
        raise InvalidInputError(f"invalid name {raw!r}: {exc}", field=field, token=raw) from exc
    labels = ascii_name.split(".")
    if labels[-1].isdigit():
        raise InvalidInputError(f"invalid address {raw!r}", field=field, token=raw)
    if not ascii_name or len(ascii_name) > 253 or not all(_LABEL.match(label) for label in labels):
        raise InvalidInputError(
            f"invalid target {raw!r}: not a hostname, address, CIDR block or address range",
            field=field,
            token=raw,
        )
    return ascii_name


def _parse_protocol(value: Protocol | str | None) -> Protocol | None:
    if value is None or isinstance(value, Protocol):
        return value
    text = value.strip().lower()
    if text in ("", "auto"):
        return None
    if text == "none":
        return Protocol.TLS
    if text not in _SCHEMES:
        raise InvalidInputError(
            f"unknown protocol {value!r} (known: auto, {', '.join(p.value for p in Protocol)})",
            field="protocol",
        )
    return _SCHEMES[text]


def _parse_exclusions(exclude: Iterable[str]) -> tuple[set[str], dict[int, list[Interval]]]:
    hosts: set[str] = set()
    blocks: dict[int, list[Interval]] = {}
    for raw in exclude:
        token = raw.strip()
        text = token[1:-1] if token.startswith("[") and token.endswith("]") else token
        try:
            parsed = _parse_address_set(text)
        except ValueError as exc:
            raise InvalidInputError(
                f"invalid exclusion {token!r}: {exc}", field="exclude", token=token
            ) from exc
        if parsed is None:
            hosts.add(_parse_name(text, field="exclude"))
        else:
            blocks.setdefault(parsed[0], []).append(parsed[1])
    return hosts, {family: _merge(intervals) for family, intervals in blocks.items()}


def _merge(intervals: list[Interval]) -> list[Interval]:
    merged: list[Interval] = []
    for lo, hi in sorted(intervals):
        if merged and lo <= merged[-1][1] + 1:
            if hi > merged[-1][1]:
                merged[-1] = (merged[-1][0], hi)
        else:
            merged.append((lo, hi))
    return merged


def _subtract(intervals: list[Interval], holes: list[Interval]) -> list[Interval]:
    """Both inputs sorted and merged; returns what of ``intervals`` no hole covers."""
    result: list[Interval] = []
    index = 0
    for lo, hi in intervals:
        start = lo
        while index < len(holes) and holes[index][1] < start:
            index += 1
        probe = index
        while probe < len(holes) and holes[probe][0] <= hi:
            hole_lo, hole_hi = holes[probe]
            if hole_lo > start:
                result.append((start, hole_lo - 1))
            start = max(start, hole_hi + 1)
            if start > hi:
                break
            probe += 1
        if start <= hi:
            result.append((start, hi))
    return result


def _unique(names: Iterable[str | None]) -> tuple[str | None, ...]:
    return tuple(dict.fromkeys(names))


def _format_v4(value: int) -> str:
    return f"{value >> 24}.{(value >> 16) & 255}.{(value >> 8) & 255}.{value & 255}"


def _format_v6(value: int) -> str:
    return str(ipaddress.IPv6Address(value))
