"""A CycloneDX 1.6 cryptographic bill of materials (CBOM) of the certificate inventory.

Components, all of type ``cryptographic-asset``:

- one per certificate (``certificate:<sha256>``), with subject, issuer, validity and references to
  its signature algorithm and public key;
- one per distinct public key (``key:<spki sha256>``; a key reused by several certificates appears
  once), a ``public-key`` with its size and a reference to its algorithm;
- one per distinct key algorithm (``algorithm:key:RSA-2048``, ``algorithm:key:EC-secp256r1``) and
  per signature algorithm (``algorithm:signature:sha256WithRSAEncryption``).

Dependencies: certificate -> key, certificate -> signature algorithm, certificate -> the issuing CA
certificate when that CA is in the inventory (its component is added to the page), key -> key
algorithm.

Memory and time: cyclonedx-python-lib builds the whole document in memory before it serialises
it, and its model (sorted sets of rich objects) costs milliseconds and kilobytes per certificate.
So a document covers one keyset page of certificates (``limit``, at most
:data:`MAX_CERTIFICATES`), read from the database in batches of :data:`READ_BATCH` rows without
the DER; the next page starts after ``next_after_id`` (also written in the document's metadata
properties). Algorithm components are shared and few; the issuer look-up is cached per issuer.

Validation uses the library's strict JSON-schema validator. Its ``uniqueItems`` check compares
array items pairwise (they are objects, which it cannot sort), so validating a page as one
document grows with the square of its size; the page is validated in slices of
:data:`VALIDATION_SLICE` components and dependencies instead, each slice a complete document.
Uniqueness across slices holds by construction (components are keyed by bom-ref), and the
library's own model check (every dependency names a known component) runs on the whole page when
it serialises. See docs/benchmarks.md for measured figures.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from cyclonedx.model import HashAlgorithm, HashType, Property
from cyclonedx.model.bom import Bom, BomMetaData
from cyclonedx.model.bom_ref import BomRef
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.model.crypto import (
    AlgorithmProperties,
    CertificateProperties,
    CryptoAssetType,
    CryptoFunction,
    CryptoPrimitive,
    CryptoProperties,
    RelatedCryptoMaterialProperties,
    RelatedCryptoMaterialType,
)
from cyclonedx.model.dependency import Dependency
from cyclonedx.output.json import JsonV1Dot6
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from sqlalchemy import select
from sqlalchemy.orm import Session

from sslclm import __version__
from sslclm.errors import InvalidInputError, SslClmError
from sslclm.inventory.models import Certificate, Issuer

READ_BATCH = 1000
DEFAULT_CERTIFICATES = 1000
MAX_CERTIFICATES = 10_000
VALIDATION_SLICE = 100

KEY_ALGORITHM_OIDS = {
    "RSA": "1.2.840.113549.1.1.1",
    "EC": "1.2.840.10045.2.1",
    "DSA": "1.2.840.10040.4.1",
    "Ed25519": "1.3.101.112",
    "Ed448": "1.3.101.113",
}
SIGNATURE_ALGORITHM_OIDS = {
    "md5WithRSAEncryption": "1.2.840.113549.1.1.4",
    "sha1WithRSAEncryption": "1.2.840.113549.1.1.5",
    "sha224WithRSAEncryption": "1.2.840.113549.1.1.14",
    "sha256WithRSAEncryption": "1.2.840.113549.1.1.11",
    "sha384WithRSAEncryption": "1.2.840.113549.1.1.12",
    "sha512WithRSAEncryption": "1.2.840.113549.1.1.13",
    "RSASSA-PSS": "1.2.840.113549.1.1.10",
    "ecdsa-with-SHA1": "1.2.840.10045.4.1",
    "ecdsa-with-SHA224": "1.2.840.10045.4.3.1",
    "ecdsa-with-SHA256": "1.2.840.10045.4.3.2",
    "ecdsa-with-SHA384": "1.2.840.10045.4.3.3",
    "ecdsa-with-SHA512": "1.2.840.10045.4.3.4",
    "ed25519": "1.3.101.112",
    "ed448": "1.3.101.113",
}
# NIST SP 800-57 part 1 comparable strengths, in bits; None where the size says nothing we trust.
RSA_STRENGTH = ((15360, 256), (7680, 192), (3072, 128), (2048, 112), (1024, 80))
EC_STRENGTH = {"Ed25519": 128, "Ed448": 224}

COLUMNS = (
    Certificate.id,
    Certificate.fingerprint_sha256,
    Certificate.subject,
    Certificate.common_name,
    Certificate.issuer_id,
    Certificate.not_before,
    Certificate.not_after,
    Certificate.key_algorithm,
    Certificate.key_size,
    Certificate.key_curve,
    Certificate.signature_algorithm,
    Certificate.public_key_sha256,
    Certificate.self_signed,
    Certificate.owner,
    Certificate.team,
)


@dataclass(frozen=True, slots=True)
class CbomPage:
    """One CBOM document: its JSON text, how many certificates it holds, and where the next page starts."""

    text: str
    certificates: int
    next_after_id: int | None


def _classical_strength(algorithm: str, size: int | None) -> int | None:
    if algorithm == "RSA" and size:
        return next((bits for minimum, bits in RSA_STRENGTH if size >= minimum), 0)
    if algorithm == "EC" and size:
        return size // 2
    return EC_STRENGTH.get(algorithm)


class _Builder:
    def __init__(self, session: Session) -> None:
        self.session = session
        self.components: dict[str, Component] = {}
        self.dependencies: dict[str, set[str]] = {}
        self._issuer_cas: dict[int, Any] = {}

    def _add(self, ref: str, component: Component, depends_on: set[str]) -> None:
        self.components[ref] = component
        self.dependencies[ref] = depends_on

    def key_algorithm(self, algorithm: str, size: int | None, curve: str | None) -> str:
        name = f"{algorithm}-{curve}" if curve else (f"{algorithm}-{size}" if size else algorithm)
        ref = f"algorithm:key:{name}"
        if ref not in self.components:
            props = AlgorithmProperties(
                primitive=CryptoPrimitive.SIGNATURE,
                parameter_set_identifier=str(size) if size and not curve else None,
                curve=curve,
                crypto_functions=[CryptoFunction.SIGN, CryptoFunction.VERIFY],
                classical_security_level=_classical_strength(algorithm, size),
                # Every classical public-key algorithm falls to a large quantum computer (Shor).
                nist_quantum_security_level=0,
            )
            self._add(
                ref,
                _asset(ref, name, CryptoAssetType.ALGORITHM, KEY_ALGORITHM_OIDS.get(algorithm), props),
                set(),
            )
        return ref

    def signature_algorithm(self, name: str) -> str:
        ref = f"algorithm:signature:{name}"
        if ref not in self.components:
            props = AlgorithmProperties(
                primitive=CryptoPrimitive.SIGNATURE,
                crypto_functions=[CryptoFunction.SIGN, CryptoFunction.VERIFY],
                nist_quantum_security_level=0,
            )
            oid = SIGNATURE_ALGORITHM_OIDS.get(name, name if name[:1].isdigit() else None)
            self._add(ref, _asset(ref, name, CryptoAssetType.ALGORITHM, oid, props), set())
        return ref

    def public_key(self, spki_sha256: str, algorithm_ref: str, size: int | None) -> str:
        ref = f"key:{spki_sha256}"
        if ref not in self.components:
            material = RelatedCryptoMaterialProperties(
                type=RelatedCryptoMaterialType.PUBLIC_KEY,
                id=spki_sha256,
                algorithm_ref=BomRef(algorithm_ref),
                size=size,
                format="SubjectPublicKeyInfo",
            )
            component = _asset(ref, f"public key {spki_sha256[:16]}", CryptoAssetType.RELATED_CRYPTO_MATERIAL)
            assert component.crypto_properties is not None
            component.crypto_properties.related_crypto_material_properties = material
            self._add(ref, component, {algorithm_ref})
        return ref

    def issuing_ca(self, issuer_id: int) -> Any | None:
        """The CA certificate in the inventory whose subject is this issuer (the newest), if any."""
        if issuer_id not in self._issuer_cas:
            dn = select(Issuer.dn).where(Issuer.id == issuer_id).scalar_subquery()
            self._issuer_cas[issuer_id] = self.session.execute(
                select(*COLUMNS, Issuer.dn.label("issuer_dn"))
                .join(Issuer, Issuer.id == Certificate.issuer_id)
                .where(Certificate.subject == dn, Certificate.is_ca.is_(True))
                .order_by(Certificate.not_after.desc(), Certificate.id.desc())
                .limit(1)
            ).first()
        return self._issuer_cas[issuer_id]

    def certificate(self, row: Any, issuer_dn: str, *, with_issuer: bool = True) -> str:
        ref = f"certificate:{row.fingerprint_sha256}"
        if ref in self.components:
            return ref
        key_alg = self.key_algorithm(row.key_algorithm, row.key_size, row.key_curve)
        key = self.public_key(row.public_key_sha256, key_alg, row.key_size)
        sig = self.signature_algorithm(row.signature_algorithm)
        depends = {key, sig}
        props = CertificateProperties(
            subject_name=row.subject,
            issuer_name=issuer_dn,
            not_valid_before=row.not_before,
            not_valid_after=row.not_after,
            signature_algorithm_ref=BomRef(sig),
            subject_public_key_ref=BomRef(key),
            certificate_format="X.509",
            certificate_extension="crt",
        )
        component = _asset(
            ref, row.common_name or row.subject or row.fingerprint_sha256, CryptoAssetType.CERTIFICATE
        )
        assert component.crypto_properties is not None
        component.crypto_properties.certificate_properties = props
        component.hashes.add(HashType(alg=HashAlgorithm.SHA_256, content=row.fingerprint_sha256))
        component.properties.add(Property(name="sslclm:certificate-id", value=str(row.id)))
        for name in ("owner", "team"):
            if getattr(row, name):
                component.properties.add(Property(name=f"sslclm:{name}", value=getattr(row, name)))
        self._add(ref, component, depends)
        if with_issuer and not row.self_signed:
            ca = self.issuing_ca(row.issuer_id)
            if ca is not None and ca.fingerprint_sha256 != row.fingerprint_sha256:
                # The CA's own issuer is not followed: each page names the direct issuers it needs.
                depends.add(self.certificate(ca, ca.issuer_dn, with_issuer=False))
        return ref

    def bom(self, now: datetime, next_after_id: int | None, certificates: int) -> Bom:
        tool = Component(type=ComponentType.APPLICATION, name="sslclm", version=__version__)
        properties = [Property(name="sslclm:certificates", value=str(certificates))]
        if next_after_id is not None:
            properties.append(Property(name="sslclm:next-after-id", value=str(next_after_id)))
        bom = Bom(metadata=BomMetaData(timestamp=now, properties=properties))
        bom.metadata.tools.components.add(tool)
        bom.components.update(self.components.values())
        bom.dependencies.update(
            Dependency(
                ref=self.components[ref].bom_ref,
                dependencies=[Dependency(ref=self.components[d].bom_ref) for d in deps],
            )
            for ref, deps in self.dependencies.items()
        )
        _skip_repeated_registration(bom, set(self.dependencies))
        return bom


def _skip_repeated_registration(bom: Bom, registered: set[str]) -> None:
    """Makes the serialiser's "register every component" pass a set look-up.

    Before writing, the library registers each component as a dependency target, finding each by a
    linear scan of the dependencies: quadratic in the page size (half the build time at 2,000
    certificates). Every component here already has its entry, so those calls have nothing to do.
    """
    original = bom.register_dependency

    def register(target: Any, depends_on: Any = None) -> None:
        if depends_on or target.bom_ref.value not in registered:
            original(target, depends_on)

    # An instance attribute: serialisation only reads the class's declared properties.
    bom.__dict__["register_dependency"] = register


def _asset(
    ref: str,
    name: str,
    asset_type: CryptoAssetType,
    oid: str | None = None,
    algorithm: AlgorithmProperties | None = None,
) -> Component:
    return Component(
        type=ComponentType.CRYPTOGRAPHIC_ASSET,
        name=name,
        bom_ref=ref,
        crypto_properties=CryptoProperties(asset_type=asset_type, algorithm_properties=algorithm, oid=oid),
    )


def _pages(session: Session, after_id: int, limit: int) -> Iterator[Any]:
    """Certificates with their issuer's name, in id order, read in keyset batches of READ_BATCH."""
    left = limit
    while left > 0:
        rows = session.execute(
            select(*COLUMNS, Issuer.dn.label("issuer_dn"))
            .join(Issuer, Issuer.id == Certificate.issuer_id)
            .where(Certificate.id > after_id, Certificate.archived_at.is_(None))
            .order_by(Certificate.id)
            .limit(min(READ_BATCH, left))
        ).all()
        yield from rows
        if len(rows) < min(READ_BATCH, left):
            return
        left -= len(rows)
        after_id = rows[-1].id


def build_cbom(
    session: Session,
    *,
    now: datetime,
    after_id: int = 0,
    limit: int = DEFAULT_CERTIFICATES,
    validate: bool = True,
) -> CbomPage:
    """One CBOM page of live certificates with ids above ``after_id``, validated against CycloneDX 1.6."""
    if not 1 <= limit <= MAX_CERTIFICATES:
        raise InvalidInputError(f"limit must be between 1 and {MAX_CERTIFICATES}", field="limit")
    if after_id < 0:
        raise InvalidInputError("after_id must not be negative", field="after_id")
    builder = _Builder(session)
    count, last_id = 0, after_id
    for row in _pages(session, after_id, limit):
        builder.certificate(row, row.issuer_dn)
        count, last_id = count + 1, row.id
    more = (
        count == limit
        and session.execute(
            select(Certificate.id).where(Certificate.id > last_id, Certificate.archived_at.is_(None)).limit(1)
        ).first()
    )
    next_after_id = last_id if more else None
    text = JsonV1Dot6(builder.bom(now, next_after_id, count)).output_as_string(indent=None)
    if validate:
        validate_cbom(text)
    return CbomPage(text=text, certificates=count, next_after_id=next_after_id)


def validate_cbom(text: str) -> None:
    """Validates a CBOM against the strict CycloneDX 1.6 JSON schema, slice by slice (see the module doc)."""
    document = orjson.loads(text)
    components, dependencies = document.pop("components", []), document.pop("dependencies", [])
    validator = JsonStrictValidator(SchemaVersion.V1_6)
    slices = max(1, -(-max(len(components), len(dependencies)) // VALIDATION_SLICE))
    for index in range(slices):
        part = dict(document)
        window = slice(index * VALIDATION_SLICE, (index + 1) * VALIDATION_SLICE)
        if components[window]:
            part["components"] = components[window]
        if dependencies[window]:
            part["dependencies"] = dependencies[window]
        error = validator.validate_str(orjson.dumps(part).decode())
        if error is not None:
            # Our own output failing the schema is a bug, not bad input.
            raise SslClmError(f"the generated CBOM is not valid CycloneDX 1.6: {error}")
