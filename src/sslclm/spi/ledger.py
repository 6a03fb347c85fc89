"""What this connection remembers in ``context.state``, so a retried issuance never orders twice.

- ``order/<sha256 of idempotency key>`` — the order serving that key: reserved (``submitting``) before the
  request goes out, given the vendor's reference (``submitted``) as soon as the answer arrives, marked
  ``uncertain`` when the request may have reached the CA but no answer came, ``rejected`` with the CA's
  reason when it refused. A retry polls the stored reference instead of ordering again;
- ``issued/<sha256 of idempotency key>`` — the certificate answered for that key;
- ``cert/<serial, 40 hex digits>`` — each certificate seen, with the vendor's reference for revoking it;
- ``chain`` — the CA chain of the last certificate, for ``get_chain``.

A certificate is recorded only after it is checked to certify the CSR's key: one that does not is
refused with a non-retryable error and never stored as issued.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from sslclm.errors import (
    CARejectedError,
    CAUnavailableError,
    CertificateFormatError,
    ConnectorError,
    InvalidInputError,
)
from sslclm.pki import certificate_to_pem, extract_info, load_bundle, load_certificate, public_key_sha256
from sslclm.pki.ca_tools import csr_names, load_csr, normalize_names
from sslclm.spi import ChainResult, ConnectorContext, IssueRequest, IssueResult

_SERIAL_DIGITS = 40


def key_id(idempotency_key: str) -> str:
    return hashlib.sha256(idempotency_key.encode()).hexdigest()


def padded(serial: int) -> str:
    return f"{serial:0{_SERIAL_DIGITS}x}"


@dataclass(frozen=True, slots=True)
class CheckedCsr:
    digest: str  # of the PEM as sent, to spot a key reused with another CSR
    spki: str  # SHA-256 of the CSR's public key, which the certificate must certify
    names: frozenset[str]


def check_request(request: IssueRequest) -> CheckedCsr:
    """The CSR parses, its signature verifies and it asks for exactly ``request.names``; otherwise
    ``CARejectedError`` naming the field."""
    try:
        csr = load_csr(request.csr_pem)
        asked = csr_names(csr)
    except InvalidInputError as exc:
        raise CARejectedError(exc.message, field="csr_pem") from None
    try:
        wanted = normalize_names(request.names)
    except InvalidInputError as exc:
        raise CARejectedError(exc.message, field="names") from None
    if asked != wanted or not wanted:
        raise CARejectedError(
            f"the CSR asks for {sorted(asked) or 'no names'} but the request is for {sorted(wanted)}",
            field="names",
        )
    return CheckedCsr(
        digest=hashlib.sha256(request.csr_pem.strip()).hexdigest(),
        spki=public_key_sha256(csr.public_key()),
        names=wanted,
    )


def split_pems(data: bytes, vendor: str) -> list[bytes]:
    """Every certificate in a PEM (or PKCS#7) answer, each re-encoded as PEM, in the order sent."""
    try:
        certificates = load_bundle(data).certificates
    except CertificateFormatError as exc:
        raise ConnectorError(f"{vendor} sent no usable certificate: {exc.message}", retryable=False) from None
    if not certificates:
        raise ConnectorError(f"{vendor} sent no certificate", retryable=False)
    return [certificate_to_pem(cert) for cert in certificates]


@dataclass
class OrderRecord:
    csr: str
    spki: str
    state: str  # submitting, submitted, uncertain, rejected
    at: str
    ref: str | None = None
    message: str = ""


class Ledger:
    def __init__(self, context: ConnectorContext, vendor: str, submit_lease: timedelta) -> None:
        self.context = context
        self.state = context.state
        self.vendor = vendor
        self.submit_lease = submit_lease

    # --- orders -------------------------------------------------------------------------------------

    def order(self, key: str) -> OrderRecord | None:
        raw = self.state.get(f"order/{key}")
        return OrderRecord(**json.loads(raw)) if raw is not None else None

    def _put(self, key: str, record: OrderRecord) -> None:
        self.state.put(f"order/{key}", json.dumps(asdict(record)).encode())

    def begin(self, key: str, csr: CheckedCsr) -> OrderRecord | None:
        """None when this call reserved the key and must place the order; the existing order (with its
        reference) when one was placed before. Raises when the key cannot be served safely."""
        now = self.context.now().isoformat()
        fresh = OrderRecord(csr=csr.digest, spki=csr.spki, state="submitting", at=now)
        winner = self.state.put_if_absent(f"order/{key}", json.dumps(asdict(fresh)).encode())
        if winner is None:
            return None
        record = OrderRecord(**json.loads(winner))
        if record.csr != csr.digest:
            raise CARejectedError(
                "this idempotency key was already used for a different CSR", field="idempotency_key"
            )
        return self.usable(key, record)

    def usable(self, key: str, record: OrderRecord) -> OrderRecord:
        """The record when it has a reference to poll; otherwise the error that says why not."""
        if record.state == "rejected":
            raise CARejectedError(record.message or f"{self.vendor} refused this request")
        if record.ref is not None:
            return record
        started = datetime.fromisoformat(record.at)
        if record.state == "submitting" and self.context.now() - started < self.submit_lease:
            raise CAUnavailableError(
                f"another attempt is placing this order with {self.vendor} right now; try again shortly"
            )
        raise ConnectorError(
            f"an earlier attempt to order this certificate from {self.vendor} was interrupted before the CA "
            f"answered, so it may have placed an order; to avoid a duplicate nothing is ordered again. Look "
            f"for the request marked 'sslclm:{key[:16]}' at {self.vendor}, cancel it or let it issue, "
            "then request the certificate again",
            retryable=False,
            marker=f"sslclm:{key[:16]}",
        )

    def submitted(self, key: str, ref: str, csr: CheckedCsr) -> OrderRecord:
        done = OrderRecord(
            csr=csr.digest, spki=csr.spki, state="submitted", at=self.context.now().isoformat(), ref=ref
        )
        self._put(key, done)
        return done

    def failed(self, key: str, csr: CheckedCsr, exc: Exception) -> None:
        """After a submission failed: release the key when the CA surely placed nothing, otherwise keep
        it as ``uncertain`` so no retry orders a second time."""
        data: dict[str, Any] = getattr(exc, "data", {})
        if data.get("outcome_unknown"):
            now = self.context.now().isoformat()
            self._put(key, OrderRecord(csr=csr.digest, spki=csr.spki, state="uncertain", at=now))
            self.context.logger.warning(
                "an order for key %s may have reached %s without an answer", key[:16], self.vendor
            )
        else:
            self.state.delete(f"order/{key}")

    def rejected(self, key: str, record: OrderRecord, message: str) -> CARejectedError:
        record.state, record.message = "rejected", message
        self._put(key, record)
        return CARejectedError(message)

    # --- certificates -----------------------------------------------------------------------------

    def accept(self, key: str, record: OrderRecord, pems: list[bytes], ref: str) -> IssueResult:
        """Record the CA's answer (leaf first) for ``key`` after checking it certifies the CSR's key."""
        leaf, chain = pems[0], tuple(pems[1:])
        info = extract_info(load_certificate(leaf))
        if info.public_key_sha256 != record.spki:
            self.context.logger.error("%s returned a certificate for another key (%s)", self.vendor, ref)
            raise ConnectorError(
                f"{self.vendor} returned a certificate (serial {info.serial}) that does not certify the "
                "CSR's key; it was not recorded as issued",
                retryable=False,
                serial=info.serial,
            )
        serial = int(info.serial, 16)
        self.remember(serial, ref, leaf)
        if chain:
            self.state.put("chain", json.dumps([pem.decode() for pem in chain]).encode())
        done = {
            "certificate": leaf.decode(),
            "chain": [pem.decode() for pem in chain],
            "serial": f"{serial:x}",
            "csr": record.csr,
            "ref": ref,
        }
        self.state.put(f"issued/{key}", json.dumps(done).encode())
        self.state.delete(f"order/{key}")
        return IssueResult.issued(leaf, chain, serial=f"{serial:x}")

    def replay(self, key: str, csr_digest: str | None) -> IssueResult | None:
        raw = self.state.get(f"issued/{key}")
        if raw is None:
            return None
        done = json.loads(raw)
        if csr_digest is not None and done["csr"] != csr_digest:
            raise CARejectedError(
                "this idempotency key was already used for a different CSR", field="idempotency_key"
            )
        chain = tuple(pem.encode() for pem in done["chain"])
        return IssueResult.issued(done["certificate"].encode(), chain, serial=done["serial"])

    def issued_ref(self, key: str) -> str | None:
        raw = self.state.get(f"issued/{key}")
        return str(json.loads(raw)["ref"]) if raw is not None else None

    def remember(self, serial: int, ref: str, pem: bytes) -> None:
        entry = {"ref": ref, "certificate": pem.decode()}
        self.state.put(f"cert/{padded(serial)}", json.dumps(entry).encode())

    def known(self, serial: int) -> tuple[str, bytes] | None:
        raw = self.state.get(f"cert/{padded(serial)}")
        if raw is None:
            return None
        entry = json.loads(raw)
        return str(entry["ref"]), str(entry["certificate"]).encode()

    def chain(self) -> ChainResult:
        raw = self.state.get("chain")
        chain = tuple(str(pem).encode() for pem in json.loads(raw)) if raw is not None else ()
        anchor = chain[-1] if chain and extract_info(load_certificate(chain[-1])).self_signed else None
        return ChainResult(chain_pem=chain, root_pem=anchor)
