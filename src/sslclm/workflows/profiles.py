"""Enrollment profiles."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from sslclm.audit.service import AuditContext, record
from sslclm.core.platform import Platform
from sslclm.errors import ConflictError, InvalidInputError, NotFoundError
from sslclm.pki import KEY_TYPES
from sslclm.spi.capabilities import ConnectorKind
from sslclm.workflows.connections import get_connection
from sslclm.workflows.models import Profile
from sslclm.workflows.names import validate_patterns
from sslclm.workflows.planner import DEFAULT_FRACTION, check_policy

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,149}$")
PURPOSES = ("server", "client", "both")


class ProfileInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=150)
    description: str | None = Field(default=None, max_length=2000)
    ca_connection: str = Field(description="Name or id of the CA connection.")
    key_type: str = "EC-P256"
    validity_days: int = Field(default=90, ge=1, le=3650)
    allowed_names: list[str] = Field(default_factory=list, max_length=500)
    purpose: str = "server"
    approval_required: bool = False
    renewal_mode: str = "fraction"
    renewal_value: float = DEFAULT_FRACTION
    options: dict[str, Any] = Field(default_factory=dict)


def _validate(data: ProfileInput) -> None:
    if not NAME.match(data.name):
        raise InvalidInputError("name must be 1-150 letters, digits or . _ -", field="name")
    if data.key_type not in KEY_TYPES:
        raise InvalidInputError(f"key type must be one of {', '.join(KEY_TYPES)}", field="key_type")
    if data.purpose not in PURPOSES:
        raise InvalidInputError(f"purpose must be one of {', '.join(PURPOSES)}", field="purpose")
    check_policy(data.renewal_mode, data.renewal_value)


def create_profile(session: Session, ctx: AuditContext, platform: Platform, data: ProfileInput) -> Profile:
    _validate(data)
    if session.execute(select(Profile.id).where(Profile.name == data.name)).first():
        raise ConflictError(f"profile '{data.name}' already exists", field="name")
    connection = get_connection(session, data.ca_connection, ConnectorKind.CA_GATEWAY)
    now = platform.clock()
    profile = Profile(
        name=data.name,
        description=data.description,
        ca_connection_id=connection.id,
        key_type=data.key_type,
        validity_days=data.validity_days,
        allowed_names=validate_patterns(data.allowed_names),
        purpose=data.purpose,
        approval_required=data.approval_required,
        renewal_mode=data.renewal_mode,
        renewal_value=data.renewal_value,
        options=data.options,
        created_at=now,
        updated_at=now,
    )
    session.add(profile)
    session.flush()
    summary = data.model_dump()
    record(session, ctx, "profile.create", "profile", profile.id, summary)
    return profile


def get_profile(session: Session, ref: str | int) -> Profile:
    text = str(ref)
    stmt = (
        select(Profile).where(Profile.id == int(text))
        if text.isdigit()
        else select(Profile).where(Profile.name == text)
    )
    profile = session.execute(stmt).scalar_one_or_none()
    if profile is None:
        raise NotFoundError(f"no profile '{text}'", field="profile")
    return profile


def list_profiles(session: Session) -> Sequence[Profile]:
    return session.execute(select(Profile).order_by(Profile.name)).scalars().all()


def describe(profile: Profile) -> dict[str, Any]:
    return {
        "id": profile.id,
        "name": profile.name,
        "description": profile.description,
        "ca_connection_id": profile.ca_connection_id,
        "key_type": profile.key_type,
        "validity_days": profile.validity_days,
        "allowed_names": profile.allowed_names,
        "purpose": profile.purpose,
        "approval_required": profile.approval_required,
        "renewal_mode": profile.renewal_mode,
        "renewal_value": profile.renewal_value,
        "options": profile.options,
        "created_at": profile.created_at,
        "updated_at": profile.updated_at,
    }
