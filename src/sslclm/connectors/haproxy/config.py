"""The ``haproxy`` store's settings: where the PEM files go, how to test and how to reload."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from sslclm.spi.base import ConnectorConfig
from sslclm.spi.config_fields import AbsolutePath, AliasTemplate, OptionalAbsolutePath, SecretFileMode


class HaproxyConfig(ConnectorConfig):
    directory: AbsolutePath = Field(description="Absolute path of the directory the PEM files are written to")
    crt_file: AliasTemplate = Field(
        "{alias}.pem", description="File name template of the combined certificate + chain + key PEM"
    )
    crt_list: OptionalAbsolutePath = Field(
        None,
        description=(
            "Absolute path of a crt-list file the store keeps in step: one line per alias's PEM "
            "(bind ... ssl crt-list <file>). Lines it did not write are left alone."
        ),
    )
    owner: str | None = Field(None, description="Owner of the files (name or uid)")
    group: str | None = Field(None, description="Group of the files (name or gid)")
    mode: SecretFileMode = Field("0600", description="Mode of the PEM files (octal; they hold the key)")
    haproxy: str = Field("haproxy", description="The haproxy binary")
    config_file: AbsolutePath = Field("/etc/haproxy/haproxy.cfg", description="haproxy -f: the configuration")
    pid_file: OptionalAbsolutePath = Field(
        "/run/haproxy.pid",
        description="Pid file of the master process (master-worker mode); it is sent SIGUSR2 to reload",
    )
    reload_command: list[str] | None = Field(
        None,
        description=(
            "Command that reloads haproxy instead of signalling the master, e.g. "
            '["systemctl", "reload", "haproxy"] (run without a shell)'
        ),
    )
    timeout: float = Field(30.0, gt=0, le=600, description="Seconds a test or reload may take")

    @field_validator("reload_command")
    @classmethod
    def _command(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and (not value or not all(part.strip() for part in value)):
            raise ValueError("the reload command is a non-empty list of non-empty arguments")
        return value

    @model_validator(mode="after")
    def _reload_method(self) -> HaproxyConfig:
        if self.reload_command is None and self.pid_file is None:
            raise ValueError("set pid_file (master-worker mode) or reload_command, or haproxy cannot reload")
        return self
