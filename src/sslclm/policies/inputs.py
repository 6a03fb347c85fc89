"""``PolicyInput``s for stored certificates: the row, its tags, profile, endpoints and key reuse.

Rows are read through :class:`~sslclm.policies.driver.Driver` and the auxiliary facts fetched per
batch (an id range when the batch is a slice of the inventory in id order, id lists otherwise), so a
certificate costs a tuple unpacking and a dataclass, not a trip through SQLAlchemy's result
processing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from sslclm.inventory.models import Certificate, Issuer
from sslclm.policies.checks import PolicyInput, input_builder
from sslclm.policies.driver import IN_CHUNK, Driver, Ids

INPUT_COLUMNS = (
    Certificate.id,
    Certificate.not_before,
    Certificate.not_after,
    Certificate.key_algorithm,
    Certificate.key_size,
    Certificate.key_curve,
    Certificate.signature_algorithm,
    Certificate.sans,
    Certificate.common_name,
    Certificate.extended_key_usage,
    Issuer.dn,
    Certificate.self_signed,
    Certificate.is_ca,
    Certificate.revoked_at,
    Certificate.public_key_sha256,
    Certificate.owner,
    Certificate.team,
    Certificate.environment,
)
PUBLIC_KEY = 14  # position of public_key_sha256 in a row

# The same columns for the driver; the conditions appended select live certificates only.
_INPUT_SQL = (
    "SELECT "  # noqa: S608 (column names are the constants above)
    + ", ".join(f"{column.table.name}.{column.name}" for column in INPUT_COLUMNS)
    + " FROM certificates JOIN issuers ON issuers.id = certificates.issuer_id"
    " WHERE certificates.archived_at IS NULL AND "
)
_DER_SQL = "SELECT id, der FROM certificates WHERE "
_TAGS_SQL = "SELECT certificate_id, tag FROM certificate_tags WHERE "
_PROFILES_SQL = (
    "SELECT issuances.certificate_id, profiles.name FROM issuances"
    " JOIN managed_certificates ON managed_certificates.id = issuances.managed_certificate_id"
    " JOIN profiles ON profiles.id = managed_certificates.profile_id WHERE "
)
_ENDPOINTS_SQL = (
    "SELECT certificate_id, count(*), min(tls_version),"
    " sum(CASE WHEN NOT trusted THEN 1 ELSE 0 END), sum(CASE WHEN NOT hostname_match THEN 1 ELSE 0 END)"
    " FROM endpoints WHERE last_status = 'ok' AND {} GROUP BY certificate_id"
)
_KEYS_SQL = (
    "SELECT public_key_sha256, count(*) FROM certificates WHERE {}"
    " GROUP BY public_key_sha256 HAVING count(*) > 1"
)
NOT_SERVED = (0, None, 0, 0)
NO_TAGS: frozenset[str] = frozenset()


def input_select() -> Any:
    """The input columns as a SQLAlchemy query (decoded rows, for tools and tests)."""
    return select(*INPUT_COLUMNS).join(Issuer, Issuer.id == Certificate.issuer_id)


def fetch_after(driver: Driver, after_id: int, limit: int) -> list[tuple[Any, ...]]:
    """The next ``limit`` live certificate rows after ``after_id``, in id order, undecoded."""
    mark = driver.mark
    return driver.fetch(
        _INPUT_SQL + f"certificates.id > {mark} ORDER BY certificates.id LIMIT {mark}", [after_id, limit]
    )


def fetch_ids(driver: Driver, ids: Sequence[int]) -> list[tuple[Any, ...]]:
    """The live certificate rows among ``ids``, undecoded."""
    rows: list[tuple[Any, ...]] = []
    for condition, params in driver.filters("certificates.id", ids):
        rows.extend(driver.fetch(_INPUT_SQL + condition, params))
    return rows


# Holders of one public key are counted up to this many. A key in thousands of certificates (one
# wildcard key everywhere, or a corpus drawn from a small pool of keys) would otherwise cost every
# batch holding it a walk over all its holders; the check only needs "more than one".
KEY_COUNT_CAP = 1000
_SQLITE_KEY_COUNTS = (
    "WITH keys(k) AS (VALUES {}) SELECT k, (SELECT count(*) FROM (SELECT 1 FROM certificates"
    " WHERE public_key_sha256 = keys.k LIMIT ?)) FROM keys"
)
_PG_KEY_COUNTS = (
    "SELECT k, (SELECT count(*) FROM (SELECT 1 FROM certificates WHERE public_key_sha256 = k LIMIT %s) s)"
    " FROM unnest(%s::text[]) AS k"
)


def key_counts_with(
    driver: Driver, public_keys: Iterable[str], *, cap: int = KEY_COUNT_CAP
) -> dict[str, int]:
    """How many certificates carry each of these public keys, up to ``cap`` (keys held by one only
    are left out): one index probe per key, whatever the number of holders."""
    keys = sorted(set(public_keys))
    found: dict[str, int] = {}
    for start in range(0, len(keys), IN_CHUNK):
        chunk = keys[start : start + IN_CHUNK]
        if driver.postgresql:
            rows = driver.fetch(_PG_KEY_COUNTS, [cap, chunk])
        else:
            values = ", ".join("(?)" for _ in chunk)
            rows = driver.fetch(_SQLITE_KEY_COUNTS.format(values), [*chunk, cap])
        found.update((key, count) for key, count in rows if count > 1)
    return found


def shared_keys(driver: Driver) -> dict[str, int]:
    """:func:`key_counts_with` for every key at once: one scan of the public-key index, far
    cheaper than probing it for each certificate when a pass covers the whole inventory."""
    return dict(driver.fetch(_KEYS_SQL.format("1 = 1")))


def load_inputs(session: Session, rows: Sequence[Any]) -> list[PolicyInput]:
    """Policy inputs for rows as SQLAlchemy returns them (``INPUT_COLUMNS``, in that order)."""
    return list(iter_inputs(Driver(session), rows, [row[0] for row in rows], decoded=True))


# The fields iter_inputs passes, in its order (positional: keyword arguments for 25 fields cost
# more per input than several of the checks).
_BUILD = input_builder(
    (
        "certificate_id",
        "not_before",
        "not_after",
        "key_algorithm",
        "key_size",
        "key_curve",
        "signature_algorithm",
        "sans",
        "common_name",
        "extended_key_usage",
        "issuer",
        "self_signed",
        "is_ca",
        "revoked",
        "public_key_sha256",
        "owner",
        "team",
        "environment",
        "profile",
        "tags",
        "key_shared_with",
        "endpoints",
        "min_tls_version",
        "untrusted_endpoints",
        "hostname_mismatches",
    )
)


def _same(value: Any) -> Any:
    return value


def iter_inputs(
    driver: Driver,
    rows: Sequence[Any],
    ids: Ids,
    *,
    decoded: bool = False,
    keys: dict[str, int] | None = None,
    with_der: bool = False,
) -> Iterator[PolicyInput]:
    """Policy inputs for certificate rows, with tags, profile, endpoints and key reuse.

    ``ids`` selects at least the rows' certificates (facts of others it covers are ignored);
    ``decoded`` says the rows already hold Python values rather than what the driver returns;
    ``keys`` is :func:`shared_keys` when the caller has it (looked up per batch otherwise);
    ``with_der`` adds each certificate's DER, for checks that read the certificate itself.

    The facts of the batch are read first, then each input is built when the caller asks for it,
    so a caller that is done with an input before the next keeps one alive instead of a batch of
    them (fewer garbage collections).
    """
    tags: dict[int, set[str]] = {}
    profiles: dict[int, str] = {}
    served: dict[int, tuple[int, str | None, int, int]] = {}
    for condition, params in driver.filters("certificate_id", ids):
        for cid, tag in driver.fetch(_TAGS_SQL + condition, params):
            tags.setdefault(cid, set()).add(tag)
        for cid, count, lowest, bad_trust, bad_name in driver.fetch(_ENDPOINTS_SQL.format(condition), params):
            served[cid] = (count, lowest, int(bad_trust or 0), int(bad_name or 0))
    for condition, params in driver.filters("issuances.certificate_id", ids):
        profiles.update(driver.fetch(_PROFILES_SQL + condition, params))
    if keys is None:
        keys = key_counts_with(driver, {row[PUBLIC_KEY] for row in rows})
    ders = _ders(driver, ids) if with_der else None
    timestamp: Callable[[Any], Any] = _same if decoded else driver.timestamp
    json: Callable[[Any], Any] = _same if decoded else driver.json
    make = _BUILD
    # Rows unpacked by position: attribute access by name costs more than the checks themselves.
    for (
        cid,
        not_before,
        not_after,
        key_algorithm,
        key_size,
        key_curve,
        signature_algorithm,
        sans,
        common_name,
        eku,
        issuer,
        self_signed,
        is_ca,
        revoked_at,
        public_key,
        owner,
        team,
        environment,
    ) in rows:
        endpoints, lowest, bad_trust, bad_name = served.get(cid, NOT_SERVED)
        cert_tags = tags.get(cid)
        sans = json(sans)
        eku = json(eku)
        item = make(
            cid,
            timestamp(not_before),  # aware UTC, as UTCDateTime returns it
            timestamp(not_after),
            key_algorithm,
            key_size,
            key_curve,
            signature_algorithm,
            tuple(sans) if sans else (),
            common_name,
            tuple(eku) if eku else (),
            issuer,
            bool(self_signed),
            bool(is_ca),
            revoked_at is not None,
            public_key,
            owner,
            team,
            environment,
            profiles.get(cid),
            frozenset(cert_tags) if cert_tags else NO_TAGS,
            max(keys.get(public_key, 1) - 1, 0),
            endpoints,
            lowest,
            bad_trust,
            bad_name,
        )
        if ders is not None and cid in ders:
            _SET_DER(item, bytes(ders[cid]))
        yield item


# The slot's own setter: the input is frozen, and this is the one field filled after it is built.
_SET_DER: Callable[[PolicyInput, bytes], None] = getattr(PolicyInput, "der").__set__  # noqa: B009


def _ders(driver: Driver, ids: Ids) -> dict[int, bytes]:
    """The certificates themselves, in one query per id filter: the rows that every evaluation
    reads stay narrow, and only policies with checks that read the DER pay for it."""
    found: dict[int, bytes] = {}
    for condition, params in driver.filters("id", ids):
        found.update(driver.fetch(_DER_SQL + condition, params))
    return found
