"""The TLS scanner against a zoo of real TLS servers on loopback, each characterised exactly."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes

from sslclm.connectors.tls_scan import (
    ErrorKind,
    ScanOptions,
    ScanResult,
    ScanTarget,
    TlsScanner,
    TrustError,
    TrustStore,
    parse_targets,
    scan,
)
from support.tls_zoo import (
    DAY,
    NOW,
    Issued,
    Pki,
    Server,
    free_port,
    issue,
    new_key,
    server_context,
    sni_context,
    write_identity,
)

NAME = "www.zoo.test"


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


async def collect(targets: Any, options: ScanOptions) -> list[ScanResult]:
    return [result async for result in scan(targets, options)]


@dataclass(frozen=True)
class Endpoint:
    label: str
    served: tuple[Issued, ...]  # leaf first, exactly what the server sends
    tls_version: str = "TLSv1.3"
    trusted: bool = True
    trust_error: TrustError | None = None
    hostname_match: bool = True
    maximum_version: ssl.TLSVersion | None = None
    minimum_version: ssl.TLSVersion | None = None


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki.create()


def _zoo(pki: Pki) -> list[Endpoint]:
    other = Pki.create("Other")
    old_ca = issue(
        "Old Issuing CA", issuer=pki.root, ca=True, not_before=NOW - 400 * DAY, not_after=NOW - DAY
    )
    rsa_ca = issue("RSA Issuing CA", issuer=pki.root, ca=True, key=new_key("rsa2048"))
    sha1_leaf = issue(NAME, issuer=rsa_ca, names=[NAME], hash_algorithm=hashes.SHA1())  # noqa: S303 - under test
    deep = [pki.intermediate]
    for level in range(3):
        deep.append(issue(f"Level {level} CA", issuer=deep[-1], ca=True))
    i = pki.intermediate
    return [
        Endpoint("valid", (pki.leaf(NAME), i)),
        Endpoint(
            "expired",
            (pki.leaf(NAME, not_before=NOW - 90 * DAY, not_after=NOW - DAY), i),
            trusted=False,
            trust_error=TrustError.EXPIRED,
        ),
        Endpoint(
            "not yet valid",
            (pki.leaf(NAME, not_before=NOW + DAY), i),
            trusted=False,
            trust_error=TrustError.NOT_YET_VALID,
        ),
        Endpoint(
            "self-signed", (issue(NAME, names=[NAME]),), trusted=False, trust_error=TrustError.SELF_SIGNED
        ),
        Endpoint(
            "untrusted root",
            (other.leaf(NAME), other.intermediate, other.root),
            trusted=False,
            trust_error=TrustError.UNTRUSTED_ROOT,
        ),
        Endpoint(
            "missing intermediate",
            (pki.leaf(NAME),),
            trusted=False,
            trust_error=TrustError.MISSING_INTERMEDIATE,
        ),
        Endpoint(
            "expired intermediate",
            (issue(NAME, issuer=old_ca, names=[NAME]), old_ca),
            trusted=False,
            trust_error=TrustError.EXPIRED_INTERMEDIATE,
        ),
        Endpoint("wrong hostname", (pki.leaf("other.zoo.test"), i), hostname_match=False),
        Endpoint(
            "SHA-1 signed",
            (sha1_leaf, rsa_ca),
            trusted=False,
            trust_error=TrustError.WEAK_ALGORITHM,
        ),
        Endpoint(
            "RSA-1024",
            (pki.leaf(NAME, key=new_key("rsa1024")), i),
            trusted=False,
            trust_error=TrustError.WEAK_ALGORITHM,
        ),
        Endpoint("ECDSA P-384", (pki.leaf(NAME, key=new_key("ec384")), i)),
        Endpoint("long chain", (issue(NAME, issuer=deep[-1], names=[NAME]), *reversed(deep))),
        Endpoint(
            "TLS 1.2 only", (pki.leaf(NAME), i), tls_version="TLSv1.2", maximum_version=ssl.TLSVersion.TLSv1_2
        ),
        Endpoint(
            "TLS 1.0 only (RSA)",
            (pki.leaf(NAME, key=new_key("rsa2048")), i),
            tls_version="TLSv1",
            maximum_version=ssl.TLSVersion.TLSv1,
            minimum_version=ssl.TLSVersion.TLSv1,
        ),
    ]


def _context(endpoint: Endpoint, directory: Path) -> ssl.SSLContext:
    label = endpoint.label.replace(" ", "-")
    cert, key = write_identity(directory, label, endpoint.served[0], endpoint.served[1:])
    return server_context(
        cert, key, maximum_version=endpoint.maximum_version, minimum_version=endpoint.minimum_version
    )


def test_zoo_is_characterised_exactly(pki: Pki, tmp_path: Path) -> None:
    zoo = _zoo(pki)

    async def main() -> dict[str, ScanResult]:
        async with contextlib.AsyncExitStack() as stack:
            ports = {}
            for endpoint in zoo:
                server = await stack.enter_async_context(Server(ssl_context=_context(endpoint, tmp_path)))
                ports[server.port] = endpoint.label
            options = ScanOptions(trust_store=TrustStore([pki.root.cert]), concurrency=4)
            targets = [ScanTarget("127.0.0.1", port, NAME) for port in ports]
            return {ports[r.target.port]: r for r in await collect(targets, options)}

    results = run(main())
    assert len(results) == len(zoo)
    for endpoint in zoo:
        result = results[endpoint.label]
        observed = (
            result.ok,
            result.chain,
            result.tls_version,
            result.trusted,
            result.trust_error_kind,
            result.hostname_match,
        )
        expected = (
            True,
            tuple(c.der for c in endpoint.served),
            endpoint.tls_version,
            endpoint.trusted,
            endpoint.trust_error,
            endpoint.hostname_match,
        )
        assert observed == expected, endpoint.label
        assert result.leaf == endpoint.served[0].der
        assert result.address == "127.0.0.1"
        assert result.cipher and result.error is None and result.error_kind is None
        assert result.connect_time is not None and result.handshake_time is not None
        assert (result.trust_error is None) == endpoint.trusted
        assert result.scanned_at.tzinfo is not None


def test_sni_selects_the_certificate_and_an_address_is_also_scanned_without_sni(
    pki: Pki, tmp_path: Path
) -> None:
    leaves = {name: pki.leaf(name) for name in ("a.zoo.test", "b.zoo.test")}
    default_leaf = pki.leaf("127.0.0.1")

    def context_for(label: str, leaf: Issued) -> ssl.SSLContext:
        return server_context(*write_identity(tmp_path, label, leaf, [pki.intermediate]))

    context = sni_context(
        context_for("default", default_leaf), {n: context_for(n, leaf) for n, leaf in leaves.items()}
    )

    async def main() -> list[ScanResult]:
        async with Server(ssl_context=context) as server:
            targets = parse_targets(["a.zoo.test,b.zoo.test@127.0.0.1"], ports=[server.port])
            return await collect(targets, ScanOptions(trust_store=TrustStore([pki.root.cert])))

    by_sni = {r.target.sni: r for r in run(main())}
    assert set(by_sni) == {None, "a.zoo.test", "b.zoo.test"}
    assert by_sni[None].leaf == default_leaf.der
    assert by_sni["a.zoo.test"].leaf == leaves["a.zoo.test"].der
    assert by_sni["b.zoo.test"].leaf == leaves["b.zoo.test"].der
    assert all(r.trusted and r.hostname_match for r in by_sni.values())


def test_alpn_and_cipher_are_recorded(pki: Pki, tmp_path: Path) -> None:
    cert, key = write_identity(tmp_path, "alpn", pki.leaf(NAME), [pki.intermediate])

    async def main() -> list[ScanResult]:
        async with (
            Server(ssl_context=server_context(cert, key, alpn=["http/1.1"])) as http11,
            Server(ssl_context=server_context(cert, key, alpn=["h2", "http/1.1"])) as h2,
            Server(
                ssl_context=server_context(
                    cert, key, maximum_version=ssl.TLSVersion.TLSv1_2, ciphers="ECDHE-ECDSA-AES128-GCM-SHA256"
                )
            ) as fixed,
        ):
            targets = [ScanTarget("127.0.0.1", s.port, NAME) for s in (http11, h2, fixed)]
            options = ScanOptions(trust_store=TrustStore([pki.root.cert]), concurrency=1)
            return await collect(targets, options)

    http11_result, h2_result, fixed_result = run(main())
    assert http11_result.alpn == "http/1.1"
    assert h2_result.alpn == "h2"
    assert fixed_result.alpn is None
    assert (fixed_result.tls_version, fixed_result.cipher) == ("TLSv1.2", "ECDHE-ECDSA-AES128-GCM-SHA256")


def test_hostname_target_is_resolved_and_named_in_sni(pki: Pki, tmp_path: Path) -> None:
    cert, key = write_identity(tmp_path, "localhost", pki.leaf("localhost"), [pki.intermediate])

    async def main() -> list[ScanResult]:
        async with Server(ssl_context=server_context(cert, key)) as server:
            options = ScanOptions(trust_store=TrustStore([pki.root.cert]))
            return await collect(parse_targets([f"localhost:{server.port}"]), options)

    (result,) = run(main())
    assert result.target == ScanTarget("localhost", result.target.port, "localhost")
    assert (result.ok, result.address, result.trusted, result.hostname_match) == (
        True,
        "127.0.0.1",
        True,
        True,
    )


def test_ipv6_loopback(pki: Pki, tmp_path: Path) -> None:
    cert, key = write_identity(tmp_path, "v6", pki.leaf("::1"), [pki.intermediate])

    async def main() -> list[ScanResult]:
        async with Server(ssl_context=server_context(cert, key), host="::1") as server:
            options = ScanOptions(trust_store=TrustStore([pki.root.cert]))
            return await collect(parse_targets([f"[::1]:{server.port}"]), options)

    (result,) = run(main())
    assert (result.ok, result.address, result.trusted, result.hostname_match) == (True, "::1", True, True)


def test_range_with_ports_and_exclusions_end_to_end(pki: Pki, tmp_path: Path) -> None:
    cert, key = write_identity(tmp_path, "range", pki.leaf("127.0.0.1"), [pki.intermediate])

    async def main() -> tuple[int, list[ScanResult]]:
        async with Server(ssl_context=server_context(cert, key)) as server:
            # 127.0.0.2 is loopback too, but nothing listens there: refused, like the other port.
            targets = parse_targets(
                ["127.0.0.0/30"], ports=f"{server.port},{free_port()}", exclude=["127.0.0.0", "127.0.0.3"]
            )
            assert targets.count == 4
            options = ScanOptions(trust_store=TrustStore([pki.root.cert]))
            return server.port, await collect(targets, options)

    port, results = run(main())
    outcome = {(r.target.host, r.target.port == port): (r.ok, r.error_kind) for r in results}
    assert outcome == {
        ("127.0.0.1", True): (True, None),
        ("127.0.0.2", True): (False, ErrorKind.REFUSED),
        ("127.0.0.1", False): (False, ErrorKind.REFUSED),
        ("127.0.0.2", False): (False, ErrorKind.REFUSED),
    }


def test_one_scanner_judges_trust_at_the_time_each_scan_starts(pki: Pki, tmp_path: Path) -> None:
    cert, key = write_identity(tmp_path, "clock", pki.leaf(NAME), [pki.intermediate])
    now = [NOW]
    clock: Callable[[], Any] = lambda: now[0]  # noqa: E731

    async def main() -> list[ScanResult]:
        async with Server(ssl_context=server_context(cert, key)) as server:
            scanner = TlsScanner(ScanOptions(trust_store=TrustStore([pki.root.cert]), clock=clock))
            target = ScanTarget("127.0.0.1", server.port, NAME)
            first = [r async for r in scanner.scan([target])]
            now[0] = NOW + 365 * DAY
            second = [r async for r in scanner.scan([target])]
            return first + second

    first, second = run(main())
    assert (first.trusted, first.scanned_at) == (True, NOW)
    assert (second.trusted, second.trust_error_kind, second.scanned_at) == (
        False,
        TrustError.EXPIRED,
        NOW + 365 * DAY,
    )
