"""Writing TLS scan results into the database, a batch per transaction.

One batch of results becomes: the served certificates (leaf and chain) in the inventory through
the shared :class:`~sslclm.inventory.writer.InventoryWriter`, with an ``endpoint`` sighting per
endpoint; the endpoint rows (created on first contact, updated with the latest result); the
endpoint's history (a new observation when it serves a different certificate, else the open one
is extended); and one summary row per endpoint for this scan, which scan comparisons read.

Every statement works on the whole batch (a few hundred endpoints), so the database sees a handful
of round trips per batch rather than per endpoint. Rewriting a batch is harmless: every write is
an upsert, so a scan that is run again after a crash converges to the same rows.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Table, bindparam, insert, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from sslclm.connectors.tls_scan import ScanResult, ScanTarget
from sslclm.core.platform import Platform
from sslclm.discovery.models import Endpoint, EndpointObservation, ScanEndpointResult
from sslclm.inventory.models import Sighting
from sslclm.inventory.writer import InventoryWriter, ParsedFile
from sslclm.pki import CertificateInfo, parse_certificate
from sslclm.policies.incremental import certificates_written

SOURCE = "tls-scan"
SIGHTING_KIND = "endpoint"
# Composite IN lists carry four values per key; this stays under every backend's parameter limit.
KEY_CHUNK = 200
_PARSE_CACHE = 4096


def endpoint_location(target: ScanTarget) -> str:
    """How sightings name an endpoint: ``host:port``, with the SNI name and STARTTLS scheme when used."""
    return str(target)


def endpoint_key(target: ScanTarget) -> tuple[str, int, str, str]:
    return (target.host, target.port, target.sni or "", target.protocol.value)


def connected(result: ScanResult) -> bool:
    """Whether anything answered at the endpoint (a TCP connection was made)."""
    return result.ok or result.connect_time is not None


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    results: int
    ok: int
    failed: int
    recorded: int  # endpoints written (the rest never answered and were not known)
    new_endpoints: int
    changed: int  # endpoints now serving a different certificate
    certificates_inserted: int


class ResultRecorder:
    """Records batches of results for one scan; keeps a small cache of parsed certificates."""

    def __init__(self, platform: Platform, scan_id: int | None) -> None:
        self.platform = platform
        self.scan_id = scan_id
        # Policies are evaluated once the endpoint rows (which the checks read) are written.
        self.writer = InventoryWriter(
            platform, source=SOURCE, sighting_kind=SIGHTING_KIND, evaluate_policies=False
        )
        self._parsed: OrderedDict[bytes, CertificateInfo | None] = OrderedDict()

    def _info(self, der: bytes) -> CertificateInfo | None:
        """Parsed once per scan while it stays in the cache: thousands of endpoints share a chain."""
        if der in self._parsed:
            self._parsed.move_to_end(der)
            return self._parsed[der]
        try:
            parsed: CertificateInfo | None = parse_certificate(der)
        except ValueError:
            parsed = None  # a server may send bytes cryptography cannot load; the rest is kept
        self._parsed[der] = parsed
        if len(self._parsed) > _PARSE_CACHE:
            self._parsed.popitem(last=False)
        return parsed

    def record(self, session: Session, results: Sequence[ScanResult], now: datetime) -> BatchOutcome:
        """Writes ``results`` in the caller's transaction."""
        by_key: dict[tuple[str, int, str, str], ScanResult] = {}
        for result in results:
            by_key[endpoint_key(result.target)] = result
        ok = sum(1 for r in results if r.ok)
        existing = _existing_endpoints(session, list(by_key))
        # Endpoints where nothing answered are only kept when already known: a sweep over a closed
        # /16 must not leave 65,536 rows behind, but a known endpoint going dark is news.
        keep = {k: r for k, r in by_key.items() if connected(r) or k in existing}
        if not keep:
            return BatchOutcome(len(results), ok, len(results) - ok, 0, 0, 0, 0)

        chains: dict[tuple[str, int, str, str], list[CertificateInfo]] = {}
        files = []
        for key, result in keep.items():
            if not result.ok:
                continue
            infos = [info for info in (self._info(der) for der in result.chain) if info is not None]
            if infos and result.chain and infos[0].der == result.chain[0]:
                chains[key] = infos
                files.append(ParsedFile(endpoint_location(result.target), infos))
        written = self.writer.write(session, files, now=now) if files else None
        cert_ids = written.certificate_ids if written else {}
        if files:
            _fill_sighting_endpoints(session, [(k, keep[k].target) for k in chains])

        missing = [k for k in keep if k not in existing]
        if missing:
            session.execute(
                _insert(session, Endpoint.__table__).on_conflict_do_nothing(),
                [
                    {
                        "host": host,
                        "port": port,
                        "sni": sni,
                        "protocol": protocol,
                        "chain": [],
                        "first_seen_at": now,
                    }
                    for host, port, sni, protocol in missing
                ],
            )
            existing.update(_existing_endpoints(session, missing))

        observations: list[dict[str, Any]] = []
        extend: list[dict[str, Any]] = []
        updates: dict[int, dict[str, Any]] = {}
        summaries: list[dict[str, Any]] = []
        changed = 0
        for key, result in keep.items():
            endpoint_id, current_cert, observation_id = existing[key]
            values: dict[str, Any] = {
                "id": endpoint_id,
                "address": result.address,
                "last_scanned_at": now,
                "last_scan_id": self.scan_id,
            }
            served = chains.get(key, [])
            leaf_id = cert_ids.get(served[0].fingerprint_sha256) if served else None
            if result.ok:
                values.update(
                    last_status="ok",
                    last_error_kind=None,
                    last_error=None,
                    tls_version=result.tls_version,
                    cipher=result.cipher,
                    alpn=result.alpn,
                    trusted=result.trusted,
                    trust_error_kind=result.trust_error_kind.value if result.trust_error_kind else None,
                    trust_error=result.trust_error,
                    hostname_match=result.hostname_match,
                    last_ok_at=now,
                    chain=[info.fingerprint_sha256 for info in served],
                )
                if leaf_id is not None:
                    values["certificate_id"] = leaf_id
                    if leaf_id == current_cert and observation_id is not None:
                        extend.append({"id": observation_id, "last_seen": now})
                    else:
                        changed += current_cert is not None
                        observations.append(
                            {
                                "endpoint_id": endpoint_id,
                                "certificate_id": leaf_id,
                                "previous_certificate_id": current_cert,
                                "scan_id": self.scan_id,
                                "first_seen": now,
                                "last_seen": now,
                            }
                        )
            else:
                values.update(
                    last_status="error",
                    last_error_kind=result.error_kind.value if result.error_kind else "error",
                    last_error=result.error,
                )
            updates[endpoint_id] = values
            if self.scan_id is not None:
                summaries.append(
                    {
                        "scan_id": self.scan_id,
                        "endpoint_id": endpoint_id,
                        "ok": result.ok,
                        "certificate_id": leaf_id,
                        "error_kind": values.get("last_error_kind"),
                        "trusted": result.trusted if result.ok else None,
                    }
                )

        if observations:
            opened = session.execute(
                insert(EndpointObservation).returning(
                    EndpointObservation.id, EndpointObservation.endpoint_id
                ),
                observations,
            ).all()
            for observation_id, endpoint_id in opened:
                updates[endpoint_id]["observation_id"] = observation_id
        if extend:
            session.execute(update(EndpointObservation), extend)
        for group in _grouped_by_columns(updates.values()):
            session.execute(update(Endpoint), group)
        if summaries:
            stmt = _insert(session, ScanEndpointResult.__table__)
            stmt = stmt.on_conflict_do_update(
                index_elements=["scan_id", "endpoint_id"],
                set_={
                    name: stmt.excluded[name] for name in ("ok", "certificate_id", "error_kind", "trusted")
                },
            )
            session.execute(stmt, summaries)
        # What each endpoint serves feeds the trust, hostname, TLS version and blast-radius checks:
        # the certificates served now and those served before are evaluated again.
        served_ids = {v["certificate_id"] for v in updates.values() if "certificate_id" in v}
        previous_ids = {current for _, current, _ in existing.values() if current is not None}
        certificates_written(
            session, written.new_ids if written else (), now=now, also=served_ids | previous_ids
        )
        return BatchOutcome(
            results=len(results),
            ok=ok,
            failed=len(results) - ok,
            recorded=len(keep),
            new_endpoints=len(missing),
            changed=changed,
            certificates_inserted=written.inserted if written else 0,
        )


def _insert(session: Session, table: Any) -> Any:
    dialect = session.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _existing_endpoints(
    session: Session, keys: Sequence[tuple[str, int, str, str]]
) -> dict[tuple[str, int, str, str], tuple[int, int | None, int | None]]:
    """key → (id, current certificate id, open observation id) for the keys that exist."""
    found: dict[tuple[str, int, str, str], tuple[int, int | None, int | None]] = {}
    columns = (Endpoint.host, Endpoint.port, Endpoint.sni, Endpoint.protocol)
    for chunk in _chunks(keys, KEY_CHUNK):
        rows = session.execute(
            select(*columns, Endpoint.id, Endpoint.certificate_id, Endpoint.observation_id).where(
                tuple_(*columns).in_(list(chunk))
            )
        )
        for host, port, sni, protocol, endpoint_id, cert_id, observation_id in rows:
            found[(host, port, sni, protocol)] = (endpoint_id, cert_id, observation_id)
    return found


def _fill_sighting_endpoints(
    session: Session, targets: Sequence[tuple[tuple[str, int, str, str], ScanTarget]]
) -> None:
    """Sets host, port and SNI on endpoint sightings the writer created (it knows only the location)."""
    table = Sighting.__table__
    assert isinstance(table, Table)
    stmt = (
        update(table)
        .where(
            table.c.kind == SIGHTING_KIND,
            table.c.location == bindparam("_location"),
            table.c.host.is_(None),
        )
        .values(host=bindparam("_host"), port=bindparam("_port"), sni=bindparam("_sni"))
    )
    params = [
        {
            "_location": endpoint_location(target),
            "_host": target.host,
            "_port": target.port,
            "_sni": target.sni,
        }
        for _, target in targets
    ]
    session.execute(stmt, params)


def _grouped_by_columns(rows: Iterable[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Bulk UPDATE by primary key wants the same columns in every row of one call."""
    groups: dict[frozenset[str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(frozenset(row), []).append(row)
    return list(groups.values())
