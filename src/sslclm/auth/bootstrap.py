"""Creates the first admin on an empty database."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sslclm.audit.service import AuditContext
from sslclm.auth import service
from sslclm.auth.permissions import Role
from sslclm.auth.secrets import generate_password
from sslclm.core.db import session_scope
from sslclm.core.platform import Platform

PASSWORD_FILE = "initial-admin-password"


@dataclass(frozen=True, slots=True)
class AdminCredentials:
    username: str
    password: str | None  # None when it was set by the operator and is not ours to print
    password_file: Path | None
    created: bool


def ensure_first_admin(platform: Platform) -> AdminCredentials | None:
    """Creates the first admin when there is no user yet; returns what to tell the operator.

    A generated password is kept in a 0600 file in the data directory so that a later start can
    remind the operator; the file is removed once that admin changes the password.
    """
    settings = platform.settings
    password_file = settings.home / PASSWORD_FILE
    with session_scope(platform.sessions) as session:
        if service.count_users(session) > 0:
            if password_file.exists():
                return AdminCredentials(
                    settings.admin_username, password_file.read_text().strip(), password_file, False
                )
            return None
        given = settings.admin_password.get_secret_value() if settings.admin_password else None
        password = given or generate_password()
        service.create_user(
            session, AuditContext(actor="system"), settings.admin_username, password, Role.ADMIN.value
        )
    if given:
        return AdminCredentials(settings.admin_username, None, None, True)
    settings.ensure_home()
    fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(password + "\n")
    return AdminCredentials(settings.admin_username, password, password_file, True)
