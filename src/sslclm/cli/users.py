"""``sslclm user``, ``sslclm token`` and ``sslclm audit``: accounts, API tokens and the audit chain.

The CLI acts with the rights of whoever can read the data directory and database, so it needs no
login; its changes are audited as ``cli:<os user>``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

import typer
from sqlalchemy import select

from sslclm.audit.service import verify_chain
from sslclm.auth import service
from sslclm.auth.bootstrap import PASSWORD_FILE
from sslclm.auth.models import ApiToken, User
from sslclm.auth.permissions import Role
from sslclm.cli.common import (
    OutputFormat,
    OutputOption,
    PasswordStdinOption,
    cli_context,
    emit,
    emit_json,
    opened_platform,
    read_password,
    unit_of_work,
)
from sslclm.core.clock import as_utc, utcnow
from sslclm.core.db import session_scope
from sslclm.errors import InvalidInputError

user_app = typer.Typer(help="User accounts.", no_args_is_help=True)
token_app = typer.Typer(help="API tokens (bearer tokens for scripts and integrations).", no_args_is_help=True)
audit_app = typer.Typer(help="The tamper-evident audit log.", no_args_is_help=True)

ROLES = ", ".join(role.value for role in Role)
USER_COLUMNS = [
    ("username", "Username"),
    ("role", "Role"),
    ("disabled", "Disabled"),
    ("created_at", "Created"),
    ("last_login_at", "Last login"),
]
TOKEN_COLUMNS = [
    ("id", "ID"),
    ("user", "User"),
    ("name", "Name"),
    ("prefix", "Prefix"),
    ("role", "Role"),
    ("status", "Status"),
    ("created_at", "Created"),
    ("expires_at", "Expires"),
    ("last_used_at", "Last used"),
]


def _user_record(user: User) -> dict[str, Any]:
    return {
        "id": user.id,
        "username": user.username,
        "role": user.role,
        "disabled": user.disabled,
        "created_at": user.created_at,
        "last_login_at": user.last_login_at,
    }


def _token_status(token: ApiToken) -> str:
    if token.revoked_at is not None:
        return "revoked"
    if token.expires_at is not None and as_utc(token.expires_at) <= utcnow():
        return "expired"
    return "active"


def _token_record(token: ApiToken, username: str) -> dict[str, Any]:
    return {
        "id": token.id,
        "user": username,
        "name": token.name,
        "prefix": token.prefix,
        "role": token.role,
        "status": _token_status(token),
        "created_at": token.created_at,
        "expires_at": token.expires_at,
        "revoked_at": token.revoked_at,
        "last_used_at": token.last_used_at,
    }


@user_app.command("create")
def user_create(
    username: Annotated[str, typer.Argument(help="Login name.")],
    role: Annotated[str, typer.Option("--role", "-r", help=f"One of: {ROLES}.")],
    password_stdin: PasswordStdinOption = False,
    output: OutputOption = OutputFormat.TABLE,
) -> None:
    """Create a user; the password is prompted for (twice) unless --password-stdin is given."""
    # Reject a bad role before asking for a password the operator would then type in vain.
    _require_role(role)
    password = read_password(password_stdin)
    with unit_of_work() as session:
        user = service.create_user(session, cli_context(), username, password, role)
        record = _user_record(user)
    if output is OutputFormat.JSON:
        emit_json(record)
    else:
        typer.echo(f"created user '{record['username']}' with role {record['role']}")


@user_app.command("passwd")
def user_passwd(
    username: Annotated[str, typer.Argument(help="Whose password to set.")],
    password_stdin: PasswordStdinOption = False,
) -> None:
    """Set a user's password; their open UI sessions end."""
    with opened_platform() as platform:
        with session_scope(platform.sessions) as session:
            service.get_user(session, username)  # fail on an unknown name before prompting
        password = read_password(password_stdin, prompt="New password")
        with session_scope(platform.sessions) as session:
            user = service.get_user(session, username)
            service.update_user(session, cli_context(), user, password=password)
        if username == platform.settings.admin_username:
            # The generated first-admin password is only a reminder until that admin has another one.
            (platform.settings.home / PASSWORD_FILE).unlink(missing_ok=True)
    typer.echo(f"password changed for '{username}'")


@user_app.command("list")
def user_list(output: OutputOption = OutputFormat.TABLE) -> None:
    """List every user."""
    with unit_of_work() as session:
        records = [_user_record(user) for user in service.list_users(session)]
    emit(output, records, USER_COLUMNS, empty="no users")


@user_app.command("disable")
def user_disable(username: Annotated[str, typer.Argument(help="Who to disable.")]) -> None:
    """Disable a user: their sessions end and their API tokens stop working."""
    with unit_of_work() as session:
        user = service.get_user(session, username)
        service.update_user(session, cli_context(), user, disabled=True)
    typer.echo(f"user '{username}' disabled")


@user_app.command("enable")
def user_enable(username: Annotated[str, typer.Argument(help="Who to enable again.")]) -> None:
    """Enable a disabled user."""
    with unit_of_work() as session:
        user = service.get_user(session, username)
        service.update_user(session, cli_context(), user, disabled=False)
    typer.echo(f"user '{username}' enabled")


def _require_role(role: str, field: str = "role") -> None:
    if role not in {r.value for r in Role}:
        raise InvalidInputError(f"unknown role '{role}'; choose one of {ROLES}", field=field)


@token_app.command("create")
def token_create(
    user: Annotated[str, typer.Option("--user", "-u", help="The token's owner.")],
    name: Annotated[str, typer.Option("--name", "-n", help="What the token is for.")],
    role: Annotated[
        str | None, typer.Option("--role", "-r", help="A role no higher than the owner's (default: theirs).")
    ] = None,
    expires_days: Annotated[
        int | None, typer.Option("--expires-days", min=1, max=3650, help="Lifetime in days (default: none).")
    ] = None,
    output: OutputOption = OutputFormat.TABLE,
) -> None:
    """Create an API token. The secret is printed once and cannot be shown again."""
    if role is not None:
        _require_role(role)
    expires_at = utcnow() + timedelta(days=expires_days) if expires_days else None
    with unit_of_work() as session:
        owner = service.get_user(session, user)
        issued = service.create_token(session, cli_context(), owner, name, role=role, expires_at=expires_at)
        record = _token_record(issued.token, owner.username)
    if output is OutputFormat.JSON:
        emit_json({**record, "secret": issued.secret})
        return
    typer.echo(
        f"created token {record['id']} '{record['name']}' for {record['user']} (role {record['role']})"
    )
    typer.echo("secret (shown once; store it now):")
    typer.echo(issued.secret)


@token_app.command("revoke")
def token_revoke(
    token_id: Annotated[int, typer.Argument(help="The token's ID (see `sslclm token list`).")],
) -> None:
    """Revoke an API token; it stops working at once on new requests."""
    with unit_of_work() as session:
        token = service.get_token(session, token_id)
        already = token.revoked_at is not None
        service.revoke_token(session, cli_context(), token)
    typer.echo(f"token {token_id} {'was already revoked' if already else 'revoked'}")


@token_app.command("list")
def token_list(
    user: Annotated[str | None, typer.Option("--user", "-u", help="Only this user's tokens.")] = None,
    output: OutputOption = OutputFormat.TABLE,
) -> None:
    """List API tokens (never their secrets)."""
    with unit_of_work() as session:
        query = select(ApiToken, User.username).join(User, User.id == ApiToken.user_id).order_by(ApiToken.id)
        if user is not None:
            query = query.where(User.id == service.get_user(session, user).id)
        records = [_token_record(token, username) for token, username in session.execute(query)]
    emit(output, records, TOKEN_COLUMNS, empty="no API tokens")


@audit_app.command("verify")
def audit_verify(output: OutputOption = OutputFormat.TABLE) -> None:
    """Check the audit log's hash chain from the first event to the last."""
    with opened_platform() as platform, platform.sessions() as session:
        result = verify_chain(session)
    if output is OutputFormat.JSON:
        emit_json(
            {
                "ok": result.ok,
                "checked": result.checked,
                "broken_at_id": result.broken_at_id,
                "reason": result.reason,
            }
        )
    elif result.ok:
        typer.echo(f"audit log intact: {result.checked} events")
    else:
        typer.echo(f"audit log BROKEN at event #{result.broken_at_id}: {result.reason}")
    if not result.ok:
        raise typer.Exit(1)
