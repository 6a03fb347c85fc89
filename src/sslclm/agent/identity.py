"""The agent's identity on disk: its key, its certificate and the CAs it trusts, owner-only.

Layout under ``<state_dir>/identity`` (0700): ``key.pem`` (0600), ``cert.pem``, ``agent-ca.pem``,
``server-ca.pem``, ``agent.json`` (id, name, server URL), all 0600. The agent refuses to start when
the directory or any file is readable or writable by group or others: a key others can read is no
longer this host's identity.
"""

from __future__ import annotations

import json
import os
import secrets
import ssl
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sslclm.errors import ConfigurationError

KEY_FILE = "key.pem"
CERT_FILE = "cert.pem"
AGENT_CA_FILE = "agent-ca.pem"
SERVER_CA_FILE = "server-ca.pem"
META_FILE = "agent.json"
FILES = (KEY_FILE, CERT_FILE, AGENT_CA_FILE, SERVER_CA_FILE, META_FILE)


def write_private(path: Path, data: bytes) -> None:
    """Writes ``path`` 0600 in one rename, so no reader sees half a key."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def private_dir(path: Path) -> Path:
    """Creates ``path`` 0700 (and checks an existing one is owner-only)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    check_owner_only(path, directory=True)
    return path


def check_owner_only(path: Path, *, directory: bool) -> None:
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode):
        raise ConfigurationError(f"{path} is a symbolic link; the agent's identity must be a real file")
    loose = stat.S_IMODE(info.st_mode) & 0o077
    if loose:
        want = "0700" if directory else "0600"
        raise ConfigurationError(
            f"{path} is mode {stat.S_IMODE(info.st_mode):04o}; it must be {want} (owner only): "
            f"chmod {want} {path}"
        )
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        raise ConfigurationError(f"{path} belongs to another user (uid {info.st_uid})")


@dataclass
class Identity:
    directory: Path

    @property
    def exists(self) -> bool:
        return (self.directory / META_FILE).exists()

    def check(self) -> None:
        """Refuses a missing identity or one others may read or change."""
        if not self.exists:
            raise ConfigurationError(
                f"no agent identity in {self.directory}; run `sslclm agent register` first"
            )
        check_owner_only(self.directory, directory=True)
        for name in FILES:
            file = self.directory / name
            if not file.exists():
                raise ConfigurationError(f"{file} is missing; register the agent again")
            check_owner_only(file, directory=False)

    def save(
        self, *, key_pem: bytes, cert_pem: str, agent_ca_pem: str, server_ca_pem: str, meta: dict[str, Any]
    ) -> None:
        private_dir(self.directory)
        # agent.json last: its presence marks a complete identity.
        write_private(self.directory / KEY_FILE, key_pem)
        write_private(self.directory / CERT_FILE, cert_pem.encode())
        write_private(self.directory / AGENT_CA_FILE, agent_ca_pem.encode())
        write_private(self.directory / SERVER_CA_FILE, server_ca_pem.encode())
        write_private(self.directory / META_FILE, json.dumps(meta, indent=2).encode())

    def replace_certificate(self, cert_pem: str) -> None:
        write_private(self.directory / CERT_FILE, cert_pem.encode())

    def meta(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.directory / META_FILE).read_text())
        return data

    def key_pem(self) -> bytes:
        return (self.directory / KEY_FILE).read_bytes()

    def cert_pem(self) -> bytes:
        return (self.directory / CERT_FILE).read_bytes()

    def ssl_context(self) -> ssl.SSLContext:
        """Client TLS: trusts only the pinned server CA, presents the identity certificate."""
        context = ssl.create_default_context(cafile=str(self.directory / SERVER_CA_FILE))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(str(self.directory / CERT_FILE), str(self.directory / KEY_FILE))
        return context
