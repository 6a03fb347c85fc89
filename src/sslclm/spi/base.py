"""What every connector shares: a stable type key, declared capabilities, a typed config and ``check``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from sslclm.errors import NotSupportedError
from sslclm.spi.capabilities import Capability, ConnectorKind
from sslclm.spi.context import ConnectorContext
from sslclm.spi.types import CheckRequest, CheckResult

CHECK = CheckRequest()


class ConnectorConfig(BaseModel):
    """Base of every connector's config model.

    Unknown fields are refused, so a typo in a field name is an error rather than a silently ignored
    setting. Secrets are ``SecretStr`` fields: the JSON schema marks them write-only and they never
    appear in a repr or log line.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)


class Connector(ABC):
    """Base of the four connector kinds.

    Subclasses set ``type_key`` (kebab-case, equal to the entry-point name, never changed once
    published), ``capabilities`` and ``Config``. The platform builds one instance per configured
    connection with the validated config and a :class:`ConnectorContext`.
    """

    kind: ClassVar[ConnectorKind]
    type_key: ClassVar[str]
    display_name: ClassVar[str] = ""
    capabilities: ClassVar[frozenset[Capability]] = frozenset()
    Config: ClassVar[type[BaseModel]] = ConnectorConfig

    def __init__(self, config: BaseModel, context: ConnectorContext) -> None:
        if not isinstance(config, self.Config):
            expected, got = self.Config.__name__, type(config).__name__
            raise TypeError(f"{type(self).__name__} needs a {expected}, got {got}")
        self.config = config
        self.context = context

    @classmethod
    def supports(cls, capability: Capability) -> bool:
        return capability in cls.capabilities

    def _unsupported(self, capability: Capability) -> NotSupportedError:
        return NotSupportedError(
            f"connector type {self.type_key!r} does not support {capability.value!r}",
            type_key=self.type_key,
            capability=capability.value,
        )

    @abstractmethod
    def check(self, request: CheckRequest = CHECK) -> CheckResult:
        """Verify configuration, credentials and reachability without changing anything.

        Returns a result with ``ok=False`` and a human-readable message for every expected failure
        (bad credentials, unreachable endpoint); raises only on a bug.
        """
