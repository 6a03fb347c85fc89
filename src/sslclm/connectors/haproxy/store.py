"""HAProxy: one PEM per alias, written atomically, ``haproxy -c``, then a master-worker reload.

HAProxy reads the certificate, its chain and its key from one file (``bind ... ssl crt <file>``, or
many files named in a ``crt-list``). The store writes that file with the key's mode from the first
byte, keeps the previous content beside it for rollback, optionally keeps a crt-list in step, tests
the whole configuration, and reloads: SIGUSR2 to the master process named by the pid file (then it
waits until the master has started new workers), or a configured command such as
``systemctl reload haproxy``. The platform verifies afterwards, by a TLS handshake, that the endpoint
serves the new certificate; on failure it calls ``restore_previous`` and ``reload`` again.

Point ``crt`` at the files or at a crt-list, not at the whole directory: HAProxy would also load the
``<name>.previous`` copies kept there for rollback.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import ClassVar

from sslclm.connectors.haproxy.config import HaproxyConfig
from sslclm.errors import ConflictError, ConnectorError
from sslclm.spi.base import CHECK
from sslclm.spi.capabilities import Capability
from sslclm.spi.files import FileSpec, PemLayout, write_file_set
from sslclm.spi.store import (
    AddRequest,
    AddResult,
    CertificateStore,
    InventoryRequest,
    InventoryResult,
    ReloadRequest,
    ReloadResult,
    RemoveRequest,
    RemoveResult,
    StoreEntry,
)
from sslclm.spi.types import CheckRequest, CheckResult

_ALERT_PREFIX = re.compile(r"^\[(?:ALERT|WARNING|NOTICE)\]\s*\(\d+\)\s*:\s*")
_CRT_LIST_MODE = 0o644  # names files, holds no secret


class HaproxyStore(CertificateStore):
    type_key = "haproxy"
    display_name = "HAProxy"
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.INVENTORY, Capability.ADD, Capability.REMOVE, Capability.RELOAD}
    )
    Config = HaproxyConfig
    needs_private_key = True

    @property
    def _config(self) -> HaproxyConfig:
        assert isinstance(self.config, HaproxyConfig)
        return self.config

    @property
    def layout(self) -> PemLayout:
        c = self._config
        mode = int(c.mode, 8)
        return PemLayout(
            directory=Path(c.directory),
            certificate_file="",
            chain_file="",
            fullchain_file="",
            key_file="",
            combined_file=c.crt_file,
            owner=c.owner,
            group=c.group,
            mode=mode,
            key_mode=mode,
        )

    # --- files -------------------------------------------------------------------------------------

    def _pem_path(self, alias: str) -> Path:
        return self.layout.paths(alias)["combined"]

    def _crt_list_update(self, *, add: Path | None = None, drop: Path | None = None) -> FileSpec | None:
        """The crt-list with ``add`` listed and ``drop`` not, or None when it needs no change."""
        if self._config.crt_list is None:
            return None
        path = Path(self._config.crt_list)
        try:
            text = path.read_text()
            mode = path.stat().st_mode & 0o777
        except FileNotFoundError:
            text, mode = "", _CRT_LIST_MODE
        except OSError as exc:
            raise ConnectorError(f"cannot read {path}: {exc.strerror or exc}", retryable=False) from None
        lines = text.splitlines()

        def names(line: str) -> str | None:
            stripped = line.strip()
            return stripped.split()[0] if stripped and not stripped.startswith("#") else None

        kept = [line for line in lines if drop is None or names(line) != str(drop)]
        if add is not None and not any(names(line) == str(add) for line in kept):
            kept.append(str(add))
        if kept == lines:
            return None
        content = ("\n".join(kept) + "\n" if kept else "").encode()
        return FileSpec(path, content, mode=mode, owner=self._config.owner, group=self._config.group)

    def _sync_crt_list(self, alias: str) -> None:
        pem = self._pem_path(alias)
        spec = self._crt_list_update(add=pem) if pem.exists() else self._crt_list_update(drop=pem)
        if spec is not None:
            write_file_set([spec], keep_previous=False)

    def add(self, request: AddRequest) -> AddResult:
        layout = self.layout
        files = layout.files_for(request)
        existed = layout.exists(request.alias)
        if existed and not request.overwrite:
            raise ConflictError(f"alias '{request.alias}' already exists", field="alias")
        if not layout.directory.is_dir():
            raise ConnectorError(f"directory {layout.directory} does not exist", retryable=False)
        listing = self._crt_list_update(add=self._pem_path(request.alias))
        # One set: the PEM and its crt-list line appear together or not at all.
        write_file_set([*files, *([listing] if listing else [])])
        return AddResult(alias=request.alias, replaced=existed)

    def remove(self, request: RemoveRequest) -> RemoveResult:
        # The crt-list line goes first: a list naming a missing file fails haproxy -c.
        listing = self._crt_list_update(drop=self._pem_path(request.alias))
        if self.layout.exists(request.alias) and listing is not None:
            write_file_set([listing], keep_previous=False)
        return self.layout.remove(request)

    def restore_previous(self, alias: str) -> bool:
        restored = self.layout.restore(alias)
        self._sync_crt_list(alias)
        return restored

    def inventory(self, request: InventoryRequest) -> InventoryResult:
        return self.layout.inventory(request)

    def read_entry(self, alias: str) -> StoreEntry | None:
        return self.layout.read(alias)

    # --- haproxy -----------------------------------------------------------------------------------

    def _run(self, command: list[str], what: str) -> str:
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=self._config.timeout, check=False
            )
        except FileNotFoundError:
            raise ConnectorError(f"{what}: '{command[0]}' not found", retryable=False) from None
        except subprocess.TimeoutExpired:
            raise ConnectorError(
                f"{what} timed out after {self._config.timeout:g}s", retryable=True
            ) from None
        output = "\n".join(part for part in (done.stderr, done.stdout) if part).strip()
        if done.returncode != 0:
            alerts = [line for line in output.splitlines() if line.startswith("[ALERT]")]
            first = _ALERT_PREFIX.sub("", (alerts or output.splitlines() or ["no output"])[0])
            raise ConnectorError(f"{what} failed (exit {done.returncode}): {first[:300]}", retryable=False)
        return output

    def test_configuration(self) -> None:
        """``haproxy -c``: loads the configuration and every certificate it names, changes nothing."""
        c = self._config
        self._run([c.haproxy, "-c", "-q", "-f", c.config_file], "haproxy -c")

    def _master_pid(self) -> int:
        pid_file = Path(self._config.pid_file or "")
        try:
            text = pid_file.read_text().split()
            pid = int(text[0])
        except FileNotFoundError:
            raise ConnectorError(
                f"pid file {pid_file} does not exist: is haproxy running in master-worker mode?",
                retryable=True,
            ) from None
        except (OSError, ValueError, IndexError):
            raise ConnectorError(f"pid file {pid_file} holds no process id", retryable=False) from None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            raise ConnectorError(
                f"haproxy master {pid} (from {pid_file}) is not running", retryable=True
            ) from None
        except PermissionError:
            raise ConnectorError(f"not allowed to signal haproxy master {pid}", retryable=False) from None
        return pid

    def _signal_reload(self) -> str:
        pid = self._master_pid()
        before = _children(pid)
        os.kill(pid, signal.SIGUSR2)
        if before is None:
            return f"sent SIGUSR2 to haproxy master {pid}"
        # The master re-executes itself and forks new workers; the reload is done when one exists.
        deadline = time.monotonic() + self._config.timeout
        while time.monotonic() < deadline:
            time.sleep(0.05)
            now = _children(pid)
            if now is None:
                raise ConnectorError(f"haproxy master {pid} exited during the reload", retryable=False)
            if now - before:
                return f"haproxy master {pid} reloaded (workers {sorted(now - before)})"
        raise ConnectorError(
            f"haproxy master {pid} started no new worker within {self._config.timeout:g}s of SIGUSR2",
            retryable=False,
        )

    def reload(self, request: ReloadRequest) -> ReloadResult:
        """Tests the configuration with the new files, then reloads; a refused test changes nothing."""
        self.test_configuration()
        command = self._config.reload_command
        if command:
            self._run(list(command), " ".join(command))
            return ReloadResult(message=f"haproxy reloaded by {' '.join(command)}")
        return ReloadResult(message=self._signal_reload())

    def check(self, request: CheckRequest = CHECK) -> CheckResult:
        files = self.layout.check()
        if not files.ok:
            return files
        try:
            self.test_configuration()
            running = "" if self._config.reload_command else f"; master pid {self._master_pid()}"
        except ConnectorError as exc:
            return CheckResult(ok=False, message=exc.message)
        return CheckResult(ok=True, message=f"haproxy configuration test passed{running}; {files.message}")


def _children(pid: int) -> set[int] | None:
    """The child processes of ``pid`` (Linux), or None when it is gone or the kernel cannot tell."""
    try:
        return {int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}
    except (OSError, ValueError):
        return None
