from __future__ import annotations

import itertools
import tracemalloc

import pytest

from sslclm.connectors.tls_scan import Protocol, ScanTarget, TargetSpec, parse_ports, parse_targets
from sslclm.errors import InvalidInputError

T = Protocol.TLS


def expand(*targets: str | TargetSpec, **kwargs: object) -> list[tuple[str, int, str | None, Protocol]]:
    return [(t.host, t.port, t.sni, t.protocol) for t in parse_targets(targets, **kwargs)]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("targets", "kwargs", "expected"),
    [
        (["example.com"], {}, [("example.com", 443, "example.com", T)]),
        (["Example.COM."], {}, [("example.com", 443, "example.com", T)]),
        (["bücher.example"], {}, [("xn--bcher-kva.example", 443, "xn--bcher-kva.example", T)]),
        (
            ["example.com:8443,9000-9001"],
            {},
            [("example.com", p, "example.com", T) for p in (8443, 9000, 9001)],
        ),
        (["192.0.2.7"], {"ports": "443,8443"}, [("192.0.2.7", 443, None, T), ("192.0.2.7", 8443, None, T)]),
        (["192.0.2.7:636"], {"ports": "443"}, [("192.0.2.7", 636, None, T)]),
        (["10.0.0.0/30"], {}, [(f"10.0.0.{i}", 443, None, T) for i in range(4)]),
        (["10.0.0.1/30"], {}, [(f"10.0.0.{i}", 443, None, T) for i in range(4)]),  # host bits: whole block
        (["192.0.2.1-192.0.2.3"], {}, [(f"192.0.2.{i}", 443, None, T) for i in (1, 2, 3)]),
        (["192.0.2.250-252"], {}, [(f"192.0.2.{i}", 443, None, T) for i in (250, 251, 252)]),
        (["::1"], {}, [("::1", 443, None, T)]),
        (["::1/128"], {}, [("::1", 443, None, T)]),
        (["[2001:db8::1]:8443"], {}, [("2001:db8::1", 8443, None, T)]),
        (["2001:db8::fe-ff"], {}, [("2001:db8::fe", 443, None, T), ("2001:db8::ff", 443, None, T)]),
        (
            ["[2001:db8::/127]:25"],
            {},
            [("2001:db8::", 25, None, Protocol.SMTP), ("2001:db8::1", 25, None, Protocol.SMTP)],
        ),
        # STARTTLS follows the port unless a scheme or the scan-wide protocol says otherwise.
        (
            ["mail.example"],
            {"ports": "25,587,143,110,389,465,21,5432"},
            [
                ("mail.example", 25, "mail.example", Protocol.SMTP),
                ("mail.example", 587, "mail.example", Protocol.SMTP),
                ("mail.example", 143, "mail.example", Protocol.IMAP),
                ("mail.example", 110, "mail.example", Protocol.POP3),
                ("mail.example", 389, "mail.example", Protocol.LDAP),
                ("mail.example", 465, "mail.example", T),
                ("mail.example", 21, "mail.example", Protocol.FTP),
                ("mail.example", 5432, "mail.example", Protocol.POSTGRES),
            ],
        ),
        (["smtp://mail.example:2525"], {}, [("mail.example", 2525, "mail.example", Protocol.SMTP)]),
        (["tls://mail.example:25"], {}, [("mail.example", 25, "mail.example", T)]),
        (["mail.example:25"], {"protocol": "none"}, [("mail.example", 25, "mail.example", T)]),
        (
            ["mail.example:8025"],
            {"protocol": "smtp"},
            [("mail.example", 8025, "mail.example", Protocol.SMTP)],
        ),
        # Extra SNI names: an address is also scanned without SNI, a hostname also with its own name.
        (
            ["a.example,b.example@192.0.2.9"],
            {},
            [
                ("192.0.2.9", 443, None, T),
                ("192.0.2.9", 443, "a.example", T),
                ("192.0.2.9", 443, "b.example", T),
            ],
        ),
        (
            ["192.0.2.9"],
            {"sni": ["c.example"]},
            [("192.0.2.9", 443, None, T), ("192.0.2.9", 443, "c.example", T)],
        ),
        (["www.example"], {"sni": ["www.example"]}, [("www.example", 443, "www.example", T)]),
        (
            [TargetSpec("192.0.2.9", ports=(8443,), sni=("d.example",), protocol=Protocol.IMAP)],
            {"ports": "443"},
            [("192.0.2.9", 8443, None, Protocol.IMAP), ("192.0.2.9", 8443, "d.example", Protocol.IMAP)],
        ),
        # Overlapping blocks are scanned once; exclusions cut addresses, blocks, ranges and names.
        (["10.0.0.0/30", "10.0.0.2", "10.0.0.3-4"], {}, [(f"10.0.0.{i}", 443, None, T) for i in range(5)]),
        (
            ["10.0.0.0/29"],
            {"exclude": ["10.0.0.1", "10.0.0.4/31", "10.0.0.6-7"]},
            [("10.0.0.0", 443, None, T), ("10.0.0.2", 443, None, T), ("10.0.0.3", 443, None, T)],
        ),
        (["a.example", "b.example"], {"exclude": ["B.Example"]}, [("a.example", 443, "a.example", T)]),
        (["[::1]"], {"exclude": ["[::2]"]}, [("::1", 443, None, T)]),
    ],
)
def test_expansion(
    targets: list[str | TargetSpec], kwargs: dict[str, object], expected: list[object]
) -> None:
    assert expand(*targets, **kwargs) == expected
    assert parse_targets(targets, **kwargs).count == len(expected)  # type: ignore[arg-type]


def test_ports_go_outside_addresses_so_consecutive_endpoints_hit_different_hosts() -> None:
    assert expand("192.0.2.1-2", ports="443,8443") == [
        ("192.0.2.1", 443, None, T),
        ("192.0.2.2", 443, None, T),
        ("192.0.2.1", 8443, None, T),
        ("192.0.2.2", 8443, None, T),
    ]


def test_a_slash_8_is_counted_without_being_built() -> None:
    tracemalloc.start()
    try:
        targets = parse_targets(
            ["10.0.0.0/8"], ports="443,8443", exclude=["10.128.0.0/9"], max_targets=1 << 30
        )
        first = list(itertools.islice(targets, 3))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert targets.count == len(targets) == 2 * (1 << 23)
    assert first == [ScanTarget(f"10.0.0.{i}", 443) for i in range(3)]
    assert peak < 1_000_000


def test_an_ipv6_slash_64_is_refused_by_the_cap_with_its_size() -> None:
    with pytest.raises(InvalidInputError) as info:
        parse_targets(["2001:db8::/64"])
    assert info.value.field == "targets"
    assert "18,446,744,073,709,551,616 endpoints" in info.value.message
    assert "limit of 1,048,576" in info.value.message


def test_cap_counts_ports_and_names() -> None:
    parse_targets(["192.0.2.0/30"], ports="1-2", sni=["a.example"], max_targets=16)
    with pytest.raises(InvalidInputError, match="expand to 24 endpoints, more than the limit of 16"):
        parse_targets(["192.0.2.0/30"], ports="1-3", sni=["a.example"], max_targets=16)


@pytest.mark.parametrize(
    ("targets", "kwargs", "field", "message"),
    [
        (["exa mple.com"], {}, "targets", "invalid target 'exa mple.com'"),
        (["-bad.example"], {}, "targets", "invalid target '-bad.example'"),
        (["10.0.0.300"], {}, "targets", "invalid address '10.0.0.300'"),
        (
            ["10.0.0.9-10.0.0.1"],
            {},
            "targets",
            "invalid target '10.0.0.9-10.0.0.1': the end of the range is below",
        ),
        (["10.0.0.9-3"], {}, "targets", "invalid target '10.0.0.9-3'"),
        (["10.0.0.1-256"], {}, "targets", "range end '256' is not an octet"),
        (["10.0.0.1-::1"], {}, "targets", "cannot mix IPv4 and IPv6"),
        (["10.0.0.0/33"], {}, "targets", "invalid target '10.0.0.0/33'"),
        (["[::1"], {}, "targets", "missing ']'"),
        (["[::1]443"], {}, "targets", "expected ':PORTS' after ']'"),
        (["2001:db8::zz"], {}, "targets", "not a valid IPv6 address"),
        (["gopher://example.com"], {}, "targets", "unknown scheme 'gopher'"),
        (["192.0.2.1@192.0.2.2"], {}, "targets", "an IP address cannot be an SNI name"),
        (["@192.0.2.2"], {}, "targets", "no SNI name before '@'"),
        (["example.com:0"], {}, "targets", "invalid port '0': ports are 1-65535"),
        (["example.com:https"], {}, "targets", "invalid port 'https'"),
        ([""], {}, "targets", "empty target"),
        ([], {}, "targets", "no targets given"),
        (["example.com"], {"ports": "443,70000"}, "ports", "invalid port '70000'"),
        (["example.com"], {"ports": "9010-9000"}, "ports", "invalid port range '9010-9000'"),
        (["example.com"], {"ports": ""}, "ports", "invalid port ''"),
        (["example.com"], {"sni": ["bad name"]}, "sni", "invalid target 'bad name'"),
        (["example.com"], {"exclude": ["10.0.0.0/40"]}, "exclude", "invalid exclusion '10.0.0.0/40'"),
        (["example.com"], {"protocol": "xmpp"}, "protocol", "unknown protocol 'xmpp'"),
        (["10.0.0.0/30"], {"exclude": ["10.0.0.0/24"]}, "exclude", "the exclusions remove every target"),
    ],
)
def test_bad_input_names_the_token(
    targets: list[str], kwargs: dict[str, object], field: str, message: str
) -> None:
    with pytest.raises(InvalidInputError) as info:
        parse_targets(targets, **kwargs)  # type: ignore[arg-type]
    assert info.value.field == field
    assert message in info.value.message
    assert "\n" not in info.value.message


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("443", (443,)),
        ("443, 8443 ,443", (443, 8443)),
        ("9000-9003,1", (9000, 9001, 9002, 9003, 1)),
        (8443, (8443,)),
        ([443, "8443"], (443, 8443)),
        ("1-65535", tuple(range(1, 65536))),
    ],
)
def test_parse_ports(spec: str | int | list[int | str], expected: tuple[int, ...]) -> None:
    assert parse_ports(spec) == expected


def test_target_labels() -> None:
    assert str(ScanTarget("192.0.2.1", 443)) == "192.0.2.1:443"
    assert str(ScanTarget("::1", 443, "a.example")) == "[::1]:443 (sni a.example)"
    assert str(ScanTarget("mail.example", 25, "mail.example", Protocol.SMTP)) == "smtp://mail.example:25"
    assert ScanTarget("::1", 443).expected_name == "::1"
    assert ScanTarget("::1", 443, "a.example").expected_name == "a.example"
