"""Who is making a request, as established by a token, a UI session or an agent certificate."""

from __future__ import annotations

from dataclasses import dataclass

from sslclm.auth.permissions import Permission, allows
from sslclm.errors import PermissionDeniedError


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: int | None
    username: str
    role: str
    via: str  # token, session, agent, system, cli
    token_id: int | None = None
    csrf_token: str | None = None

    @property
    def actor(self) -> str:
        """How the audit log names this principal."""
        suffix = f" (token {self.token_id})" if self.token_id else ""
        return f"{self.username}{suffix}"

    def can(self, permission: Permission) -> bool:
        return allows(self.role, permission)

    def require(self, permission: Permission) -> None:
        if not self.can(permission):
            raise PermissionDeniedError(
                f"role '{self.role}' lacks permission '{permission.value}'", permission=permission.value
            )


SYSTEM = Principal(user_id=None, username="system", role="admin", via="system")
