"""The agent's configuration file (YAML or JSON) and the paths it is allowed to touch."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sslclm.connectors.pem_files.store import PemFilesConfig
from sslclm.errors import ConfigurationError

DEFAULT_CONFIG = "/etc/sslclm-agent/agent.yaml"
DEFAULT_STATE_DIR = "/var/lib/sslclm-agent"
# nginx reloads; on Windows the certificate store is driven through Windows PowerShell.
DEFAULT_COMMANDS = ("nginx", "powershell.exe") if sys.platform == "win32" else ("nginx",)


class AgentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    server: str | None = Field(default=None, description="https://host:agent-port of the agent listener")
    name: str | None = Field(default=None, description="The agent's name (default: the host name)")
    labels: list[str] = Field(default_factory=list)
    state_dir: str = DEFAULT_STATE_DIR
    # Discovery reads only under these paths, whatever a job asks for.
    discovery_paths: list[str] = Field(default_factory=list)
    # pem-files stores by name; jobs name a store, never a path.
    stores: dict[str, PemFilesConfig] = Field(default_factory=dict)
    # Platform stores hosted on this agent may write only under these paths (their directory or
    # keystore file must lie here), whatever the store's configuration sent by the server says.
    deploy_paths: list[str] = Field(default_factory=list)
    # The programs such a store may run (nginx for a reload, PowerShell for the Windows store), by
    # the exact name or path its configuration gives.
    commands: list[str] = Field(default_factory=lambda: list(DEFAULT_COMMANDS))
    poll_seconds: int = Field(default=25, ge=1, le=60)

    @field_validator("server")
    @classmethod
    def _https(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("https://"):
            raise ValueError("the server URL must start with https://")
        return value.rstrip("/") if value else value

    @field_validator("discovery_paths", "deploy_paths")
    @classmethod
    def _absolute(cls, value: list[str]) -> list[str]:
        for path in value:
            if not os.path.isabs(path):
                raise ValueError(f"{path!r} is not an absolute path")
        return [os.path.normpath(path) for path in value]

    def allowed_paths(self) -> list[str]:
        return [
            *self.discovery_paths,
            *self.deploy_paths,
            *(store.directory for store in self.stores.values()),
        ]


def load_config(path: str | None, **overrides: Any) -> AgentConfig:
    """Reads the file (if it exists or was named) and applies the command line's values on top."""
    data: dict[str, Any] = {}
    file = Path(path or DEFAULT_CONFIG)
    if file.exists():
        try:
            loaded = yaml.safe_load(file.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigurationError(f"cannot read {file}: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigurationError(f"{file} must hold a mapping of settings")
        data.update(loaded or {})
    elif path is not None:
        raise ConfigurationError(f"configuration file {file} does not exist")
    data.update({key: value for key, value in overrides.items() if value not in (None, [], ())})
    try:
        return AgentConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ()))
        raise ConfigurationError(f"{file}: {where}: {first.get('msg')}") from None


def within(path: str, roots: list[str]) -> bool:
    """Whether ``path`` (resolved) lies under one of ``roots``."""
    real = os.path.realpath(path)
    for root in roots:
        base = os.path.realpath(root)
        if real == base or real.startswith(base.rstrip(os.sep) + os.sep):
            return True
    return False
