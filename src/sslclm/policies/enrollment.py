"""Policy at enrollment: the same checks judge a request before any key or CSR exists.

A request is refused when it breaks a blocking rule (high or critical), with every reason listed;
the issuance workflow's first step and the API route that declares a managed certificate both ask.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from sslclm.errors import InvalidInputError
from sslclm.policies.checks import PolicyInput, Severity, Violation
from sslclm.policies.engine import CompiledPolicy, load_policies

# The extended key usages a profile's purpose asks for.
PURPOSE_EKUS = {
    "server": ("serverAuth",),
    "client": ("clientAuth",),
    "both": ("serverAuth", "clientAuth"),
}


class PolicyRefusedError(InvalidInputError):
    """The request breaks a blocking policy rule."""

    code = "policy-refused"


BLOCKING = frozenset({Severity.HIGH, Severity.CRITICAL})


def _key_facts(key_type: str) -> tuple[str, int | None, str | None]:
    kind, _, size = key_type.upper().partition("-")
    if kind == "RSA":
        return "RSA", int(size) if size.isdigit() else None, None
    if kind == "EC":
        curve = {"P256": "secp256r1", "P384": "secp384r1", "P521": "secp521r1"}.get(size, size.lower())
        return "EC", {"secp256r1": 256, "secp384r1": 384, "secp521r1": 521}.get(curve), curve
    return key_type, None, None


def check_enrollment(
    session: Session,
    *,
    names: Sequence[str],
    key_type: str,
    validity_days: int,
    now: datetime,
    profile: str | None = None,
    owner: str | None = None,
    team: str | None = None,
    environment: str | None = None,
    tags: Iterable[str] = (),
    issuer: str = "",
    extended_key_usage: Sequence[str] = ("serverAuth",),
    policies: Sequence[CompiledPolicy] | None = None,
) -> list[Violation]:
    """Every violation an enrollment request would have, before any key or CSR exists.

    ``policies``: the compiled policy sets, when the caller checks many requests at once.

    Blocking ones are those at high or critical severity; :func:`enforce_enrollment` refuses them.
    """
    algorithm, size, curve = _key_facts(key_type)
    sans = tuple(f"IP:{n}" if n.replace(".", "").isdigit() or ":" in n else f"DNS:{n.lower()}" for n in names)
    item = PolicyInput(
        not_before=now,
        not_after=now + timedelta(days=validity_days),
        key_algorithm=algorithm,
        key_size=size,
        key_curve=curve,
        signature_algorithm="sha256",
        sans=sans,
        common_name=names[0] if names else None,
        extended_key_usage=tuple(extended_key_usage),
        issuer=issuer,
        owner=owner,
        team=team,
        environment=environment,
        profile=profile,
        tags=frozenset(tags),
        enrollment=True,
    )
    found = []
    for policy in load_policies(session) if policies is None else policies:
        if policy.applies(item):
            found.extend(policy.run(item, now))
    return found


def enforce_enrollment(session: Session, **request: Any) -> list[Violation]:
    """Raises :class:`PolicyRefusedError` listing every blocking reason; returns the non-blocking ones."""
    found = check_enrollment(session, **request)
    blocking = [v for v in found if v.severity in BLOCKING]
    if blocking:
        reasons = [{"check": v.check, "severity": v.severity.value, "reason": v.reason} for v in blocking]
        raise PolicyRefusedError(
            "refused by policy: " + "; ".join(f"{v.check}: {v.reason}" for v in blocking),
            field="policy",
            reasons=reasons,
        )
    return found


def enforce_managed(
    session: Session,
    *,
    names: Sequence[str],
    key_type: str,
    validity_days: int,
    purpose: str,
    profile: str,
    owner: str | None,
    team: str | None,
    tags: Iterable[str],
    now: datetime,
    policies: Sequence[CompiledPolicy] | None = None,
) -> list[Violation]:
    """:func:`enforce_enrollment` for a managed certificate's request under its profile."""
    return enforce_enrollment(
        session,
        names=list(names),
        key_type=key_type,
        validity_days=validity_days,
        now=now,
        profile=profile,
        owner=owner,
        team=team,
        tags=tags,
        extended_key_usage=PURPOSE_EKUS.get(purpose, ("serverAuth",)),
        policies=policies,
    )
