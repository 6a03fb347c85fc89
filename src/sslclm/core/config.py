"""Settings from the environment (``SSLCLM_*``), never built at import time."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of the platform; see the configuration reference in the README."""

    model_config = SettingsConfigDict(env_prefix="SSLCLM_", extra="ignore")

    home: Path = Field(default=Path(".sslclm"), description="Data directory: database, keys, CA.")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default is SQLite at $SSLCLM_HOME/sslclm.db."
    )
    master_key: SecretStr | None = Field(
        default=None, description="Base64 key-encryption key; default is read from $SSLCLM_HOME/master.key."
    )
    admin_username: str = Field(default="admin", description="The first admin's name.")
    admin_password: SecretStr | None = Field(
        default=None, description="The first admin's password; generated once when unset."
    )
    expiring_days: int = Field(default=30, ge=1, le=3650, description="Window for the 'expiring' status.")
    public_url: str | None = Field(default=None, description="URL users reach the server at.")
    server_hostnames: list[str] = Field(
        default_factory=lambda: ["localhost"], description="Names in the server's own TLS certificate."
    )
    session_hours: int = Field(default=12, ge=1, description="Lifetime of a UI login session.")
    login_max_failures: int = Field(
        default=5, ge=1, description="Failed logins for one username from one address before it is locked."
    )
    login_lockout_minutes: int = Field(
        default=15, ge=1, description="How long such a lock lasts; failures older than this are forgotten."
    )
    max_upload_bytes: int = Field(default=10 * 1024 * 1024, description="Largest accepted upload.")
    log_level: str = Field(default="INFO")
    embedded_worker: bool = Field(default=True, description="Run a job worker inside `serve`.")
    embedded_scheduler: bool = Field(default=True, description="Run the scheduler inside `serve`.")

    @cached_property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.home / 'sslclm.db').resolve()}"

    @property
    def is_sqlite(self) -> bool:
        return self.resolved_database_url.startswith("sqlite")

    def ensure_home(self) -> Path:
        self.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        return self.home


def get_settings() -> Settings:
    return Settings()
