"""The built-in policy checks: pure functions of one certificate's facts, its parameters and the clock.

Each check is ``check(PolicyInput, params, now) -> Violation | None``. The same functions judge
an enrollment request (built into a ``PolicyInput`` before any key exists) and a certificate in
the inventory; facts a check needs but the input lacks (no sighting yet, say) make it pass.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Severity(StrEnum):
    INFO = "info"
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


SEVERITY_RANK = {
    Severity.INFO: 0,
    Severity.LOW: 1,
    Severity.MEDIUM: 2,
    Severity.HIGH: 3,
    Severity.CRITICAL: 4,
}


@dataclass(frozen=True, slots=True)
class PolicyInput:
    """The facts about one certificate (or one enrollment request) that checks look at."""

    not_before: datetime
    not_after: datetime
    key_algorithm: str
    key_size: int | None = None
    key_curve: str | None = None
    signature_algorithm: str = ""
    sans: tuple[str, ...] = ()
    common_name: str | None = None
    extended_key_usage: tuple[str, ...] = ()
    issuer: str = ""
    self_signed: bool = False
    is_ca: bool = False
    revoked: bool = False
    certificate_id: int | None = None
    public_key_sha256: str = ""
    # Scope facts, matched against a policy set's scope and a check's allowed scopes.
    owner: str | None = None
    team: str | None = None
    environment: str | None = None
    profile: str | None = None
    tags: frozenset[str] = frozenset()
    # Facts from elsewhere in the inventory; None when unknown.
    key_shared_with: int | None = None  # other certificates carrying the same public key
    endpoints: int | None = None  # distinct endpoints serving it now
    min_tls_version: str | None = None  # lowest protocol version an endpoint serving it offers
    untrusted_endpoints: int | None = None
    hostname_mismatches: int | None = None
    enrollment: bool = False
    # The certificate itself, read only when an active policy set has a check that needs it.
    der: bytes | None = None

    @property
    def dns_names(self) -> tuple[str, ...]:
        return tuple(s[4:].lower() for s in self.sans if s.startswith("DNS:"))


_INPUT_DEFAULTS = {f.name: f.default for f in fields(PolicyInput) if f.default is not MISSING}
_INPUT_SETTERS = tuple((f.name, getattr(PolicyInput, f.name).__set__) for f in fields(PolicyInput))


def fast_input(**values: Any) -> PolicyInput:
    """``PolicyInput(**values)`` at a fraction of the cost, for building a million of them.

    The frozen dataclass's ``__init__`` sets each field through ``object.__setattr__``, which
    costs more than reading the row; the slots' own setters do the same work directly.
    """
    values = _INPUT_DEFAULTS | values
    if len(values) != len(_INPUT_SETTERS):
        names = {name for name, _ in _INPUT_SETTERS}
        unknown, missing = sorted(set(values) - names), sorted(names - set(values))
        raise TypeError(f"PolicyInput: unknown fields {unknown}, missing fields {missing}")
    item = object.__new__(PolicyInput)
    for name, setter in _INPUT_SETTERS:
        setter(item, values[name])
    return item


def input_builder(names: Sequence[str]) -> Callable[..., PolicyInput]:
    """A positional :func:`fast_input` for the fields ``names``, in that order (the others take
    their defaults): the names are checked once here, not for each of a million inputs."""
    setters = dict(_INPUT_SETTERS)
    unknown = sorted(set(names) - set(setters))
    missing = sorted(set(setters) - set(names) - set(_INPUT_DEFAULTS))
    if unknown or missing or len(set(names)) != len(names):
        raise TypeError(f"PolicyInput: unknown fields {unknown}, missing fields {missing}, or repeated")
    given = tuple(setters[name] for name in names)
    defaults = tuple((setter, _INPUT_DEFAULTS[name]) for name, setter in _INPUT_SETTERS if name not in names)
    new = object.__new__

    def build(*values: Any) -> PolicyInput:
        item = new(PolicyInput)
        for setter, value in zip(given, values, strict=True):
            setter(item, value)
        for setter, value in defaults:
            setter(item, value)
        return item

    return build


@dataclass(frozen=True, slots=True)
class Violation:
    check: str
    severity: Severity
    reason: str
    details: Mapping[str, Any] = field(default_factory=dict)


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


CheckFunction = Callable[[PolicyInput, Any, datetime], "Violation | None"]


@dataclass(frozen=True, slots=True)
class CheckType:
    name: str
    function: CheckFunction
    params: type[Params]
    severity: Severity
    description: str
    time_dependent: bool = False
    needs_der: bool = False  # reads PolicyInput.der, which is fetched only for such checks
    opt_in: bool = False  # left out of the built-in baseline: only policy sets that name it run it


CHECKS: dict[str, CheckType] = {}


def _register(
    name: str,
    params: type[Params],
    severity: Severity,
    *,
    time_dependent: bool = False,
    needs_der: bool = False,
    opt_in: bool = False,
) -> Callable[[CheckFunction], CheckFunction]:
    def wrap(function: CheckFunction) -> CheckFunction:
        doc = (function.__doc__ or name).strip().splitlines()[0]
        CHECKS[name] = CheckType(name, function, params, severity, doc, time_dependent, needs_der, opt_in)
        return function

    return wrap


def _v(name: str, severity: Severity, reason: str, **details: Any) -> Violation:
    return Violation(name, severity, reason, details)


# ---- key and signature ----------------------------------------------------------------------------


class KeyParams(Params):
    rsa_min_bits: int = Field(default=2048, ge=512)
    ec_curves: list[str] = Field(default_factory=lambda: ["secp256r1", "secp384r1", "secp521r1"])
    allowed_algorithms: list[str] = Field(default_factory=lambda: ["RSA", "EC", "Ed25519", "Ed448"])


@_register("key-algorithm", KeyParams, Severity.HIGH)
def check_key(item: PolicyInput, params: KeyParams, now: datetime) -> Violation | None:
    """Allowed key algorithms, minimum RSA size and allowed EC curves."""
    algorithm = item.key_algorithm
    if algorithm.upper() not in {a.upper() for a in params.allowed_algorithms}:
        return _v("key-algorithm", Severity.HIGH, f"key algorithm {algorithm} is not allowed")
    if algorithm.upper() == "RSA" and (item.key_size or 0) < params.rsa_min_bits:
        return _v(
            "key-algorithm",
            Severity.HIGH,
            f"RSA key of {item.key_size} bits is below the minimum of {params.rsa_min_bits}",
        )
    if algorithm.upper() == "EC" and item.key_curve not in params.ec_curves:
        return _v("key-algorithm", Severity.HIGH, f"EC curve {item.key_curve} is not allowed")
    return None


class SignatureParams(Params):
    forbidden: list[str] = Field(default_factory=lambda: ["md5", "sha1", "md2"])


@_register("signature-algorithm", SignatureParams, Severity.HIGH)
def check_signature(item: PolicyInput, params: SignatureParams, now: datetime) -> Violation | None:
    """Forbidden signature hash algorithms (MD5, SHA-1)."""
    name = item.signature_algorithm.lower().replace("-", "")
    for bad in params.forbidden:
        token = bad.lower().replace("-", "")
        # "sha1" must not match "sha128"-like names nor "sha1" inside "sha1024": compare whole hash names.
        if token in name and not name.split(token, 1)[1][:1].isdigit():
            return _v("signature-algorithm", Severity.HIGH, f"signature algorithm {item.signature_algorithm}")
    return None


QUANTUM_VULNERABLE = frozenset({"RSA", "EC", "DSA", "ED25519", "ED448"})


@_register("quantum-vulnerable", Params, Severity.INFO)
def check_quantum(item: PolicyInput, params: Params, now: datetime) -> Violation | None:
    """Public-key algorithms a quantum computer breaks (for migration planning)."""
    if item.key_algorithm.upper() in QUANTUM_VULNERABLE:
        return _v("quantum-vulnerable", Severity.INFO, f"{item.key_algorithm} is not quantum-safe")
    return None


# ---- validity ----------------------------------------------------------------------------------


# CA/Browser Forum ballot SC-081: the longest validity allowed for a certificate issued on or after each date.
CABF_SCHEDULE: tuple[tuple[date, int], ...] = (
    (date(2029, 3, 15), 47),
    (date(2027, 3, 15), 100),
    (date(2026, 3, 15), 200),
    (date(1970, 1, 1), 398),
)


def cabf_max_days(issued: datetime) -> int:
    day = issued.astimezone(UTC).date()
    for start, days in CABF_SCHEDULE:
        if day >= start:
            return days
    return CABF_SCHEDULE[-1][1]


class ValidityParams(Params):
    max_days: int | None = Field(default=None, ge=1, description="Fixed maximum; default the CA/B schedule.")
    include_ca: bool = False


@_register("max-validity", ValidityParams, Severity.HIGH)
def check_validity(item: PolicyInput, params: ValidityParams, now: datetime) -> Violation | None:
    """Maximum validity, by default the CA/Browser Forum schedule by issue date."""
    if item.is_ca and not params.include_ca:
        return None
    limit = params.max_days or cabf_max_days(item.not_before)
    # The CA/B limits count whole days of validity; a second of slack covers inclusive notAfter.
    length = item.not_after - item.not_before
    if length > timedelta(days=limit, seconds=1):
        return _v(
            "max-validity",
            Severity.HIGH,
            f"valid for {length.days} days; at most {limit} allowed",
            days=limit,
        )
    return None


class ExpiryParams(Params):
    warning_days: int = Field(default=30, ge=0)
    critical_days: int = Field(default=7, ge=0)


@_register("expiry", ExpiryParams, Severity.CRITICAL, time_dependent=True)
def check_expiry(item: PolicyInput, params: ExpiryParams, now: datetime) -> Violation | None:
    """Expired, or expiring within the warning or critical window."""
    if item.enrollment:
        return None
    left = item.not_after - now
    if left < timedelta(0):
        return _v("expiry", Severity.CRITICAL, f"expired {item.not_after:%Y-%m-%d}")
    if left < timedelta(days=params.critical_days):
        return _v(
            "expiry",
            Severity.HIGH,
            f"expires {item.not_after:%Y-%m-%d}, within {params.critical_days} days",
        )
    if left < timedelta(days=params.warning_days):
        # No "in N days": the reason is stored, and verdicts are refreshed when a window is crossed.
        return _v(
            "expiry",
            Severity.MEDIUM,
            f"expires {item.not_after:%Y-%m-%d}, within {params.warning_days} days",
        )
    return None


@_register("not-yet-valid", Params, Severity.MEDIUM, time_dependent=True)
def check_not_yet_valid(item: PolicyInput, params: Params, now: datetime) -> Violation | None:
    """The certificate's validity has not started."""
    if not item.enrollment and item.not_before > now:
        return _v("not-yet-valid", Severity.MEDIUM, f"not valid before {item.not_before:%Y-%m-%d %H:%M}")
    return None


# ---- identity and trust ---------------------------------------------------------------------------


class ScopeList(Params):
    allowed_environments: list[str] = Field(default_factory=lambda: ["dev", "test"])
    allowed_tags: list[str] = Field(default_factory=list)


@_register("self-signed", ScopeList, Severity.MEDIUM)
def check_self_signed(item: PolicyInput, params: ScopeList, now: datetime) -> Violation | None:
    """Self-signed leaf certificates outside the allowed environments or tags."""
    if not item.self_signed or item.is_ca:
        return None
    if item.environment in params.allowed_environments or item.tags & set(params.allowed_tags):
        return None
    return _v("self-signed", Severity.MEDIUM, "self-signed outside the allowed environments")


class WildcardParams(Params):
    allowed: bool = True
    allowed_patterns: list[str] = Field(
        default_factory=list, description="Wildcard names allowed, e.g. *.dev.example.com"
    )
    max_names: int | None = Field(default=None, ge=1, description="Most wildcard names in one certificate.")


@_register("wildcard", WildcardParams, Severity.MEDIUM)
def check_wildcard(item: PolicyInput, params: WildcardParams, now: datetime) -> Violation | None:
    """Wildcard names: forbidden, limited to patterns or in number."""
    wild = [n for n in item.dns_names if n.startswith("*.")]
    if not wild:
        return None
    if not params.allowed:
        return _v("wildcard", Severity.MEDIUM, f"wildcard names are not allowed: {', '.join(wild)}")
    if params.allowed_patterns:
        bad = [n for n in wild if not any(fnmatch.fnmatchcase(n, p.lower()) for p in params.allowed_patterns)]
        if bad:
            return _v("wildcard", Severity.MEDIUM, f"wildcard not allowed here: {', '.join(bad)}")
    if params.max_names is not None and len(wild) > params.max_names:
        return _v("wildcard", Severity.MEDIUM, f"{len(wild)} wildcard names; at most {params.max_names}")
    return None


class IssuerParams(Params):
    allowed: list[str] = Field(
        default_factory=list, description="Issuer DN patterns (glob, case-insensitive)."
    )


@_register("allowed-issuers", IssuerParams, Severity.HIGH)
def check_issuer(item: PolicyInput, params: IssuerParams, now: datetime) -> Violation | None:
    """Only certificates from the listed issuers (CAs)."""
    if not params.allowed or item.self_signed or item.enrollment:
        return None
    issuer = item.issuer.lower()
    if any(fnmatch.fnmatchcase(issuer, p.lower()) for p in params.allowed):
        return None
    return _v("allowed-issuers", Severity.HIGH, f"issuer {item.issuer} is not an allowed CA")


class DomainParams(Params):
    allowed: list[str] = Field(default_factory=list, description="Name patterns every DNS SAN must match.")
    forbidden: list[str] = Field(default_factory=list, description="Name patterns no DNS SAN may match.")


def _match_domain(name: str, pattern: str) -> bool:
    pattern = pattern.lower()
    if pattern.startswith("."):  # ".example.com": the domain itself and everything under it
        return name == pattern[1:] or name.endswith(pattern)
    return fnmatch.fnmatchcase(name, pattern)


@_register("domains", DomainParams, Severity.HIGH)
def check_domains(item: PolicyInput, params: DomainParams, now: datetime) -> Violation | None:
    """Allowed and forbidden name patterns for the DNS SANs."""
    names = item.dns_names
    forbidden = [n for n in names if any(_match_domain(n, p) for p in params.forbidden)]
    if forbidden:
        return _v("domains", Severity.HIGH, f"forbidden names: {', '.join(forbidden)}", names=forbidden)
    if params.allowed:
        outside = [n for n in names if not any(_match_domain(n, p) for p in params.allowed)]
        if outside:
            return _v("domains", Severity.HIGH, f"names outside the allowed domains: {', '.join(outside)}")
    return None


class EkuParams(Params):
    required: list[str] = Field(default_factory=list)
    forbidden: list[str] = Field(default_factory=list)


@_register("eku", EkuParams, Severity.MEDIUM)
def check_eku(item: PolicyInput, params: EkuParams, now: datetime) -> Violation | None:
    """Required and forbidden extended key usages."""
    if item.is_ca:
        return None
    have = set(item.extended_key_usage)
    missing = [e for e in params.required if e not in have]
    if missing:
        return _v("eku", Severity.MEDIUM, f"missing extended key usage: {', '.join(missing)}")
    bad = [e for e in params.forbidden if e in have]
    if bad:
        return _v("eku", Severity.MEDIUM, f"forbidden extended key usage: {', '.join(bad)}")
    return None


@_register("revoked", Params, Severity.CRITICAL)
def check_revoked(item: PolicyInput, params: Params, now: datetime) -> Violation | None:
    """The certificate is revoked (by the platform or on its CA's CRL); critical while still served."""
    if not item.revoked:
        return None
    if (item.endpoints or 0) > 0:
        return _v("revoked", Severity.CRITICAL, f"revoked but served on {item.endpoints} endpoint(s)")
    return _v("revoked", Severity.HIGH, "revoked; replace it wherever it is still installed")


@_register("key-reuse", Params, Severity.MEDIUM)
def check_key_reuse(item: PolicyInput, params: Params, now: datetime) -> Violation | None:
    """The same public key appears in several certificates."""
    if item.key_shared_with:
        # The reason names no count: it would change whenever another holder appears, and only the
        # holder whose key stops being its own is re-evaluated then.
        return _v(
            "key-reuse",
            Severity.MEDIUM,
            "the same public key is in other certificates",
            others=item.key_shared_with,
        )
    return None


class BlastParams(Params):
    max_endpoints: int = Field(default=20, ge=1)


@_register("blast-radius", BlastParams, Severity.MEDIUM)
def check_blast_radius(item: PolicyInput, params: BlastParams, now: datetime) -> Violation | None:
    """One certificate served on many endpoints."""
    if item.endpoints is not None and item.endpoints > params.max_endpoints:
        return _v(
            "blast-radius",
            Severity.MEDIUM,
            f"served on {item.endpoints} endpoints (> {params.max_endpoints})",
        )
    return None


TLS_ORDER = {"SSLv2": 0, "SSLv3": 1, "TLSv1": 2, "TLSv1.0": 2, "TLSv1.1": 3, "TLSv1.2": 4, "TLSv1.3": 5}


class TlsParams(Params):
    minimum: str = "TLSv1.2"


@_register("tls-version", TlsParams, Severity.HIGH)
def check_tls(item: PolicyInput, params: TlsParams, now: datetime) -> Violation | None:
    """An endpoint serving the certificate negotiates a protocol below TLS 1.2."""
    if item.min_tls_version is None:
        return None
    if TLS_ORDER.get(item.min_tls_version, 99) < TLS_ORDER.get(params.minimum, 4):
        return _v("tls-version", Severity.HIGH, f"served over {item.min_tls_version}")
    return None


@_register("endpoint-trust", Params, Severity.HIGH)
def check_endpoint_trust(item: PolicyInput, params: Params, now: datetime) -> Violation | None:
    """Untrusted or incomplete chain, or hostname mismatch, where the certificate is served."""
    if item.untrusted_endpoints:
        return _v(
            "endpoint-trust", Severity.HIGH, f"untrusted chain on {item.untrusted_endpoints} endpoint(s)"
        )
    if item.hostname_mismatches:
        return _v(
            "endpoint-trust", Severity.HIGH, f"hostname mismatch on {item.hostname_mismatches} endpoint(s)"
        )
    return None


# ---- CA/Browser Forum lints ------------------------------------------------------------------------


class LintParams(Params):
    min_severity: Literal["info", "notice", "warning", "error", "fatal"] = "error"
    ignore: list[str] = Field(default_factory=list)  # finding codes accepted as they are


@_register("cabf-lint", LintParams, Severity.MEDIUM, needs_der=True, opt_in=True)
def check_cabf_lint(item: PolicyInput, params: LintParams, now: datetime) -> Violation | None:
    """CA/Browser Forum TLS Baseline Requirements lints (pkilint) of server certificates."""
    if item.der is None or item.is_ca or "serverAuth" not in item.extended_key_usage:
        return None
    # Imported here: pkilint loads hundreds of validators, which only policies using it should pay for.
    from sslclm.policies.lints import lint_serverauth

    ignored = set(params.ignore)
    findings = [f for f in lint_serverauth(item.der, params.min_severity) if f.code not in ignored]
    if not findings:
        return None
    # The reason is what the violation stores and shows: the codes name what to fix.
    codes = sorted({f"{f.code} ({f.severity})" for f in findings})
    shown = ", ".join(codes[:10]) + (f" and {len(codes) - 10} more" if len(codes) > 10 else "")
    return _v("cabf-lint", Severity.MEDIUM, f"{len(findings)} CA/Browser Forum lint finding(s): {shown}")


def validate_params(check: str, raw: Mapping[str, Any] | None) -> Params:
    return CHECKS[check].params.model_validate(dict(raw or {}))
