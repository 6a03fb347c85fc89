"""Roles and the written permission matrix (also rendered in docs/permissions.md)."""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    ADMIN = "admin"
    OPERATOR = "operator"
    AUDITOR = "auditor"
    VIEWER = "viewer"


class Permission(StrEnum):
    CERT_READ = "cert:read"
    CERT_WRITE = "cert:write"  # import, update metadata, archive
    KEY_EXPORT = "key:export"  # download a private key
    USER_READ = "user:read"
    USER_MANAGE = "user:manage"
    TOKEN_OWN = "token:own"  # create and revoke one's own API tokens
    TOKEN_MANAGE = "token:manage"  # list and revoke anyone's tokens
    AUDIT_READ = "audit:read"
    CERT_ISSUE = "cert:issue"  # enroll, renew, revoke, adopt managed certificates
    CONNECTION_MANAGE = "connection:manage"  # CA connections, stores, profiles
    APPROVE = "approval:decide"  # approve or reject another person's issuance request
    POLICY_MANAGE = "policy:manage"  # policy sets and exemptions
    NOTIFICATION_MANAGE = "notification:manage"  # notification channels and rules


_READ = {Permission.CERT_READ}

MATRIX: dict[Role, frozenset[Permission]] = {
    Role.ADMIN: frozenset(Permission),
    Role.OPERATOR: frozenset({*_READ, Permission.CERT_WRITE, Permission.CERT_ISSUE, Permission.TOKEN_OWN}),
    Role.AUDITOR: frozenset({*_READ, Permission.AUDIT_READ, Permission.USER_READ, Permission.TOKEN_OWN}),
    Role.VIEWER: frozenset(_READ),  # read-only: a viewer changes nothing, not even its own tokens
}

ROLE_RANK = {Role.VIEWER: 0, Role.AUDITOR: 1, Role.OPERATOR: 2, Role.ADMIN: 3}


def allows(role: str, permission: Permission) -> bool:
    try:
        return permission in MATRIX[Role(role)]
    except ValueError:
        return False


def role_within(granted: str, ceiling: str) -> bool:
    """Whether a token's role ``granted`` is no more powerful than its owner's role ``ceiling``."""
    granted_perms = MATRIX[Role(granted)]
    return granted_perms <= MATRIX[Role(ceiling)]
