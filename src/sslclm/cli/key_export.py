"""``sslclm certs export-key``: a certificate with its private key as PEM, PKCS#12 or JKS, audited.

The file is created with mode 0600 beside its target and renamed into place, so the key is never
readable by others and a failed export leaves nothing behind. The password is prompted for (or read
from standard input) and never accepted on the command line, where the process list would show it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from sslclm.cli.common import PasswordStdinOption, cli_context, opened_platform, read_password
from sslclm.core.db import session_scope
from sslclm.errors import InvalidInputError
from sslclm.inventory.key_export import KeyExportFormat, check_export_password, export_with_key
from sslclm.inventory.service import get_certificate


def write_private_file(path: Path, content: bytes, *, overwrite: bool) -> None:
    """Writes ``content`` to ``path`` with mode 0600, atomically; refuses to replace a file unless told."""
    if path.exists() and not overwrite:
        raise InvalidInputError(f"{path} exists; add --force to replace it", field="file")
    directory = path.parent if str(path.parent) else Path(".")
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=directory)  # mode 0600
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
        raise


def register(certs_app: typer.Typer) -> None:
    @certs_app.command("export-key")
    def export_key_command(
        ref: Annotated[
            str, typer.Argument(metavar="ID_OR_FINGERPRINT", help="ID, or SHA-256 (8+ hex digits).")
        ],
        export_format: Annotated[
            KeyExportFormat,
            typer.Option(
                "--format", "-f", case_sensitive=False, help="pem (cert, chain, key), pkcs12 or jks."
            ),
        ] = KeyExportFormat.PKCS12,
        file: Annotated[
            Path | None,
            typer.Option("--file", help="Write here (mode 0600). Without it, PEM goes to standard output."),
        ] = None,
        encrypt: Annotated[
            bool, typer.Option("--encrypt", help="PEM: encrypt the key with a password (asked for).")
        ] = False,
        alias: Annotated[
            str | None, typer.Option("--alias", help="Keystore alias; default: the common name.")
        ] = None,
        force: Annotated[bool, typer.Option("--force", help="Replace an existing --file.")] = False,
        password_stdin: PasswordStdinOption = False,
    ) -> None:
        """Export a certificate WITH its private key (audited). PKCS#12 and JKS always need a password."""
        if export_format is not KeyExportFormat.PEM and file is None:
            raise InvalidInputError(f"a {export_format.value} export needs --file", field="file")
        if file is not None and file.exists() and not force:
            raise InvalidInputError(f"{file} exists; add --force to replace it", field="file")
        password: str | None = None
        if export_format is not KeyExportFormat.PEM or encrypt or password_stdin:
            password = read_password(password_stdin, prompt="Password for the exported key")
            check_export_password(export_format, password)
        with opened_platform() as platform, session_scope(platform.sessions) as session:
            exported = export_with_key(
                session,
                cli_context(),
                get_certificate(session, ref),
                platform.envelope,
                export_format=export_format,
                password=password,
                alias=alias,
            )
        # Written after the audit event is committed: an export may be audited and then fail to be
        # written, but never be written without its audit event.
        if file is None:
            sys.stdout.buffer.write(exported.content)
            sys.stdout.flush()
            return
        write_private_file(file, exported.content, overwrite=force)
        typer.echo(f"wrote {export_format.value} with the private key to {file}", err=True)
