from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes

from sslclm.connectors.tls_scan import TrustError, TrustStore, TrustVerifier
from sslclm.connectors.tls_scan.trust import default_ca_bundle, match_hostname
from sslclm.errors import InvalidInputError
from support.tls_zoo import DAY, NOW, Issued, Pki, issue, new_key


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki.create()


@pytest.fixture(scope="module")
def verifier(pki: Pki) -> TrustVerifier:
    return TrustVerifier(TrustStore([pki.root.cert]), NOW)


def chain(*certs: Issued) -> list[bytes]:
    return [c.der for c in certs]


Case = Callable[[Pki], tuple[list[bytes], str]]


def _long_chain(pki: Pki) -> tuple[list[bytes], str]:
    issuers = [pki.intermediate]
    for depth in range(4):
        issuers.append(issue(f"Level {depth} CA", issuer=issuers[-1], ca=True))
    leaf = issue("deep.example", issuer=issuers[-1], names=["deep.example"])
    return chain(leaf, *reversed(issuers)), "deep.example"


def _expired_intermediate(pki: Pki) -> tuple[list[bytes], str]:
    old = issue("Old Issuing CA", issuer=pki.root, ca=True, not_before=NOW - 400 * DAY, not_after=NOW - DAY)
    return chain(issue("www.example", issuer=old, names=["www.example"]), old), "www.example"


def _untrusted_root(pki: Pki) -> tuple[list[bytes], str]:
    other = Pki.create("Other")
    return chain(other.leaf("www.example"), other.intermediate, other.root), "www.example"


def _sha1(pki: Pki) -> tuple[list[bytes], str]:
    rsa_ca = issue("RSA Issuing CA", issuer=pki.root, ca=True, key=new_key("rsa2048"))
    leaf = issue("old.example", issuer=rsa_ca, names=["old.example"], hash_algorithm=hashes.SHA1())  # noqa: S303 - the weak certificate under test
    return chain(leaf, rsa_ca), "old.example"


CASES: list[tuple[str, Case, bool, TrustError | None, str | None, bool | None]] = [
    (
        "valid",
        lambda p: (chain(p.leaf("www.example"), p.intermediate), "www.example"),
        True,
        None,
        None,
        True,
    ),
    (
        "root served too",
        lambda p: (chain(p.leaf("a.example"), p.intermediate, p.root), "a.example"),
        True,
        None,
        None,
        True,
    ),
    (
        "wrong hostname",
        lambda p: (chain(p.leaf("www.example"), p.intermediate), "mail.example"),
        True,
        None,
        None,
        False,
    ),
    (
        "wildcard",
        lambda p: (chain(p.leaf("*.example.org"), p.intermediate), "www.example.org"),
        True,
        None,
        None,
        True,
    ),
    (
        "wildcard one label only",
        lambda p: (chain(p.leaf("*.example.org"), p.intermediate), "a.b.example.org"),
        True,
        None,
        None,
        False,
    ),
    ("ip SAN", lambda p: (chain(p.leaf("192.0.2.5"), p.intermediate), "192.0.2.5"), True, None, None, True),
    (
        "ip SAN other address",
        lambda p: (chain(p.leaf("192.0.2.5"), p.intermediate), "192.0.2.6"),
        True,
        None,
        None,
        False,
    ),
    (
        "P-384 key",
        lambda p: (chain(p.leaf("p384.example", key=new_key("ec384")), p.intermediate), "p384.example"),
        True,
        None,
        None,
        True,
    ),
    ("long chain", _long_chain, True, None, None, True),
    (
        "expired",
        lambda p: (
            chain(p.leaf("x.example", not_before=NOW - 90 * DAY, not_after=NOW - DAY), p.intermediate),
            "x.example",
        ),
        False,
        TrustError.EXPIRED,
        "certificate expired on ",
        True,
    ),
    (
        "not yet valid",
        lambda p: (chain(p.leaf("x.example", not_before=NOW + DAY), p.intermediate), "x.example"),
        False,
        TrustError.NOT_YET_VALID,
        "certificate not valid before ",
        True,
    ),
    (
        "self-signed",
        lambda p: (chain(issue("self.example", names=["self.example"])), "self.example"),
        False,
        TrustError.SELF_SIGNED,
        "self-signed certificate 'CN=self.example'",
        True,
    ),
    (
        "missing intermediate",
        lambda p: (chain(p.leaf("www.example")), "www.example"),
        False,
        TrustError.MISSING_INTERMEDIATE,
        "missing intermediate: issuer 'CN=Zoo Issuing CA' was not served and is not a trusted root",
        True,
    ),
    (
        "untrusted root",
        _untrusted_root,
        False,
        TrustError.UNTRUSTED_ROOT,
        "untrusted root 'CN=Other Root CA'",
        True,
    ),
    (
        "expired intermediate",
        _expired_intermediate,
        False,
        TrustError.EXPIRED_INTERMEDIATE,
        "intermediate 'CN=Old Issuing CA' expired on ",
        True,
    ),
    (
        "SHA-1 signature",
        _sha1,
        False,
        TrustError.WEAK_ALGORITHM,
        "weak signature: 'CN=old.example' is signed with sha1WithRSAEncryption",
        True,
    ),
    (
        "RSA-1024 key",
        lambda p: (chain(p.leaf("weak.example", key=new_key("rsa1024")), p.intermediate), "weak.example"),
        False,
        TrustError.WEAK_ALGORITHM,
        "weak key: 'CN=weak.example' has a 1024-bit RSA key",
        True,
    ),
    ("no SAN", lambda p: (chain(p.leaf(), p.intermediate), "leaf"), False, TrustError.INVALID, None, False),
    (
        "not a certificate",
        lambda p: ([b"\x30\x03\x02\x01\x00"], "x.example"),
        False,
        TrustError.UNPARSABLE,
        "the server sent a certificate that cannot be parsed",
        None,
    ),
]


@pytest.mark.parametrize(
    ("build", "trusted", "kind", "message", "hostname_match"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_served_chain_is_characterised(
    pki: Pki,
    verifier: TrustVerifier,
    build: Case,
    trusted: bool,
    kind: TrustError | None,
    message: str | None,
    hostname_match: bool | None,
) -> None:
    served, name = build(pki)
    result = verifier.check(served, name)
    assert (result.trusted, result.error_kind, result.hostname_match) == (trusted, kind, hostname_match)
    if message is None:
        assert (result.error is None) == trusted
    else:
        assert result.error is not None and result.error.startswith(message)
    assert result.error is None or "\n" not in result.error


def test_what_only_path_validation_catches_is_reported_in_one_line(pki: Pki, verifier: TrustVerifier) -> None:
    leaf = issue("noaki.example", issuer=pki.intermediate, names=["noaki.example"], authority_key_id=False)
    result = verifier.check([leaf.der, pki.intermediate.der], "noaki.example")
    assert (result.trusted, result.error_kind, result.hostname_match) == (False, TrustError.INVALID, True)
    assert result.error is not None and "missing required extension" in result.error


def test_trust_is_cached_per_chain_but_names_are_checked_each_time(pki: Pki) -> None:
    verifier = TrustVerifier(TrustStore([pki.root.cert]), NOW, cache_size=1)
    served = chain(pki.leaf("a.example", "b.example"), pki.intermediate)
    assert verifier.check(served, "a.example").hostname_match is True
    assert verifier.check(served, "b.example").hostname_match is True
    assert verifier.check(served, "c.example").hostname_match is False
    other = chain(pki.leaf("c.example"), pki.intermediate)
    assert verifier.check(other, "c.example").trusted
    assert verifier.check(served, "a.example").trusted


def test_time_of_judgement_is_the_verifiers(pki: Pki) -> None:
    served = chain(pki.leaf("www.example"), pki.intermediate)
    later = TrustVerifier(TrustStore([pki.root.cert]), NOW + 200 * DAY).check(served, "www.example")
    assert later.error_kind is TrustError.EXPIRED


def test_empty_store_trusts_nothing(pki: Pki) -> None:
    result = TrustVerifier(TrustStore([]), NOW).check(
        chain(pki.leaf("a.example"), pki.intermediate, pki.root), "a.example"
    )
    assert (result.trusted, result.error_kind) == (False, TrustError.UNTRUSTED_ROOT)
    assert TrustVerifier(TrustStore([]), NOW).check([], "a.example").error == "the server sent no certificate"


def test_store_from_files_and_system_bundle(pki: Pki, tmp_path: Path) -> None:
    bundle = tmp_path / "roots.pem"
    bundle.write_bytes(
        b"junk before\n" + pki.root.pem + b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    )
    assert TrustStore.load([bundle]).roots == (pki.root.cert,)
    system = TrustStore.load()
    assert default_ca_bundle() is not None
    assert len(system) > 50
    combined = TrustStore.load(extra_roots=[bundle], extra_pem=Pki.create("Extra").root.pem)
    assert len(combined) == len(system) + 2
    verdict = TrustVerifier(combined, NOW).check(chain(pki.leaf("a.example"), pki.intermediate), "a.example")
    assert verdict.trusted


def test_missing_bundle_is_named(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError) as info:
        TrustStore.load([tmp_path / "absent.pem"])
    assert info.value.field == "ca_bundle"
    assert "absent.pem" in info.value.message


def test_match_hostname(pki: Pki) -> None:
    leaf = pki.leaf("www.example.com", "*.apps.example.com", "2001:db8::1").der
    assert match_hostname(leaf, "WWW.example.com.")
    assert match_hostname(leaf, "x.apps.example.com")
    assert not match_hostname(leaf, "apps.example.com")
    assert match_hostname(leaf, "2001:db8:0::1")
    assert not match_hostname(leaf, "example.com")
    public_suffix_wildcard = issue("wild", issuer=pki.intermediate, names=["*.com"]).der
    assert not match_hostname(public_suffix_wildcard, "example.com")
