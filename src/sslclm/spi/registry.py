"""Loads connectors from entry points, checks them, describes them and builds configured instances.

A connector that fails to load — import error, wrong base class, a declared capability it does not
implement, a config model without a JSON schema — becomes a :class:`LoadFailure` the API can show; it
never stops the platform. The entry-point name is the connector's type key and must equal the class's
``type_key``, so a published key cannot drift from the code.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any, cast

from pydantic import BaseModel, ValidationError

from sslclm.errors import ConnectorLoadError, InvalidInputError, NotFoundError, NotSupportedError
from sslclm.spi.base import Connector
from sslclm.spi.ca import CAGateway
from sslclm.spi.capabilities import CAPABILITY_METHODS, KIND_CAPABILITIES, Capability, ConnectorKind
from sslclm.spi.context import ConnectorContext
from sslclm.spi.discovery import DiscoverySource
from sslclm.spi.notify import Notifier
from sslclm.spi.store import CertificateStore

TYPE_KEY_PATTERN = re.compile(r"^[a-z][a-z0-9]*(?:-[a-z0-9]+)*$")
TYPE_KEY_MAX = 64

# Typed loosely: mypy refuses abstract classes where ``type[Connector]`` is expected.
BASE_CLASSES: dict[ConnectorKind, type] = {
    ConnectorKind.CA_GATEWAY: CAGateway,
    ConnectorKind.CERT_STORE: CertificateStore,
    ConnectorKind.DISCOVERY_SOURCE: DiscoverySource,
    ConnectorKind.NOTIFIER: Notifier,
}


@dataclass(frozen=True, slots=True)
class ConnectorType:
    """A connector class that loaded and passed every check."""

    kind: ConnectorKind
    type_key: str
    cls: type[Connector]
    source: str  # "module:Class", as the entry point names it
    distribution: str | None = None

    @property
    def capabilities(self) -> frozenset[Capability]:
        return self.cls.capabilities

    @property
    def display_name(self) -> str:
        return self.cls.display_name or self.type_key

    def config_schema(self) -> dict[str, Any]:
        """The config model's JSON schema, which drives API validation and the UI form."""
        return self.cls.Config.model_json_schema()

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "type": self.type_key,
            "display_name": self.display_name,
            "capabilities": sorted(c.value for c in self.capabilities),
            "config_schema": self.config_schema(),
            "source": self.source,
            "distribution": self.distribution,
        }


@dataclass(frozen=True, slots=True)
class LoadFailure:
    """A connector that did not load, kept so the API can say why."""

    kind: ConnectorKind
    type_key: str
    source: str
    error: str
    distribution: str | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "type": self.type_key,
            "source": self.source,
            "distribution": self.distribution,
            "error": self.error,
        }


def _is_overridden(cls: type[Connector], base: type[Connector], method: str) -> bool:
    return getattr(cls, method, None) is not getattr(base, method, None)


def validate_connector_class(kind: ConnectorKind, type_key: str, obj: object) -> type[Connector]:
    """Check that ``obj`` is a usable connector class for ``kind`` under ``type_key``.

    Raises :class:`~sslclm.errors.ConnectorLoadError` with one line saying what is wrong.
    """
    if len(type_key) > TYPE_KEY_MAX or not TYPE_KEY_PATTERN.match(type_key):
        raise ConnectorLoadError(f"type key {type_key!r} is not kebab-case (e.g. 'local', 'aws-acm')")
    base = cast("type[Connector]", BASE_CLASSES[kind])
    if not (isinstance(obj, type) and issubclass(obj, base)):
        raise ConnectorLoadError(f"{obj!r} is not a subclass of {base.__module__}.{base.__name__}")
    cls: type[Connector] = obj
    declared_key = getattr(cls, "type_key", None)
    if declared_key != type_key:
        raise ConnectorLoadError(
            f"{cls.__name__}.type_key is {declared_key!r} but it is registered as {type_key!r}"
        )
    capabilities = cls.capabilities
    if not isinstance(capabilities, frozenset) or not all(isinstance(c, Capability) for c in capabilities):
        raise ConnectorLoadError(f"{cls.__name__}.capabilities must be a frozenset of Capability")
    foreign = capabilities - KIND_CAPABILITIES[kind]
    if foreign:
        names = ", ".join(sorted(c.value for c in foreign))
        raise ConnectorLoadError(f"{cls.__name__} declares capabilities a {kind.value} cannot have: {names}")
    if Capability.ASYNC_ISSUE in capabilities and Capability.ISSUE not in capabilities:
        raise ConnectorLoadError(f"{cls.__name__} declares async-issue without issue")
    missing = [
        f"{capability.value} ({CAPABILITY_METHODS[capability]})"
        for capability in sorted(capabilities)
        if capability in CAPABILITY_METHODS and not _is_overridden(cls, base, CAPABILITY_METHODS[capability])
    ]
    if missing:
        raise ConnectorLoadError(f"{cls.__name__} declares but does not implement: {', '.join(missing)}")
    if inspect.isabstract(cls):
        abstract = ", ".join(sorted(getattr(cls, "__abstractmethods__", ())))
        raise ConnectorLoadError(f"{cls.__name__} leaves abstract methods unimplemented: {abstract}")
    config = cls.Config
    if not (isinstance(config, type) and issubclass(config, BaseModel)):
        raise ConnectorLoadError(f"{cls.__name__}.Config must be a pydantic model class")
    try:
        config.model_json_schema()
    except Exception as exc:
        raise ConnectorLoadError(f"{cls.__name__}.Config has no JSON schema: {exc}") from exc
    return cls


def _describe_exception(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def config_error(exc: ValidationError, *, prefix: str = "config") -> InvalidInputError:
    """Turn a pydantic error into one that names the field, without echoing the input (it may be secret)."""
    problems = []
    for error in exc.errors(include_url=False, include_context=False, include_input=False):
        location = ".".join(str(part) for part in error["loc"])
        problems.append({"field": f"{prefix}.{location}" if location else prefix, "message": error["msg"]})
    first = problems[0] if problems else {"field": prefix, "message": "invalid"}
    return InvalidInputError(f"{first['field']}: {first['message']}", field=first["field"], errors=problems)


def require_capability(connector: Connector | type[Connector], capability: Capability) -> None:
    """Raise :class:`~sslclm.errors.NotSupportedError` (HTTP 501) unless the connector declares it."""
    if capability not in connector.capabilities:
        raise NotSupportedError(
            f"connector type {connector.type_key!r} does not support {capability.value!r}",
            type_key=connector.type_key,
            capability=capability.value,
        )


def call(connector: Connector, capability: Capability, request: object) -> Any:
    """Call the method behind ``capability`` after checking the connector declares it.

    Raises :class:`~sslclm.errors.NotSupportedError` for an undeclared capability; otherwise whatever
    the method raises (see the connector kind's module for what each error means).
    """
    require_capability(connector, capability)
    method_name = CAPABILITY_METHODS.get(capability)
    if method_name is None:
        raise ValueError(f"capability {capability.value!r} is a flag, not a method to call")
    return getattr(connector, method_name)(request)


class ConnectorRegistry:
    """The connector types available to this process, and the ones that failed to load."""

    def __init__(self) -> None:
        self._types: dict[tuple[ConnectorKind, str], ConnectorType] = {}
        self._failures: dict[tuple[ConnectorKind, str], LoadFailure] = {}

    @classmethod
    def from_entry_points(cls, kinds: Iterable[ConnectorKind] = tuple(ConnectorKind)) -> ConnectorRegistry:
        """Load every connector registered by any installed distribution."""
        registry = cls()
        for kind in kinds:
            for entry_point in sorted(entry_points(group=kind.entry_point_group), key=lambda ep: ep.name):
                registry.load_entry_point(kind, entry_point)
        return registry

    @property
    def failures(self) -> list[LoadFailure]:
        return sorted(self._failures.values(), key=lambda f: (f.kind.value, f.type_key))

    def load_entry_point(self, kind: ConnectorKind, entry_point: EntryPoint) -> ConnectorType | None:
        """Load and register one entry point; a failure is recorded, never raised."""
        distribution = entry_point.dist.name if entry_point.dist is not None else None
        existing = self._types.get((kind, entry_point.name))
        if existing is not None:
            if existing.source == entry_point.value:
                return existing  # the same distribution seen twice on sys.path
            self._fail(
                kind,
                entry_point.name,
                entry_point.value,
                f"type key already provided by {existing.source} ({existing.distribution})",
                distribution,
            )
            return None
        try:
            obj = entry_point.load()
        except Exception as exc:
            self._fail(kind, entry_point.name, entry_point.value, _describe_exception(exc), distribution)
            return None
        try:
            return self.register(
                kind, entry_point.name, obj, source=entry_point.value, distribution=distribution
            )
        except ConnectorLoadError as exc:
            self._fail(kind, entry_point.name, entry_point.value, exc.message, distribution)
            return None

    def register(
        self,
        kind: ConnectorKind,
        type_key: str,
        obj: object,
        *,
        source: str = "",
        distribution: str | None = None,
    ) -> ConnectorType:
        """Register a connector class directly; raises ``ConnectorLoadError`` if it fails a check."""
        if (kind, type_key) in self._types:
            raise ConnectorLoadError(f"type key {type_key!r} is already registered for {kind.value}")
        cls = validate_connector_class(kind, type_key, obj)
        connector_type = ConnectorType(
            kind=kind,
            type_key=type_key,
            cls=cls,
            source=source or f"{cls.__module__}:{cls.__qualname__}",
            distribution=distribution,
        )
        self._types[(kind, type_key)] = connector_type
        self._failures.pop((kind, type_key), None)
        return connector_type

    def _fail(
        self, kind: ConnectorKind, type_key: str, source: str, error: str, distribution: str | None
    ) -> None:
        self._failures[(kind, type_key)] = LoadFailure(kind, type_key, source, error, distribution)

    def types(self, kind: ConnectorKind | None = None) -> list[ConnectorType]:
        """The loaded connector types, by kind then type key."""
        found = [t for (k, _), t in self._types.items() if kind is None or k is kind]
        return sorted(found, key=lambda t: (t.kind.value, t.type_key))

    def get(self, kind: ConnectorKind, type_key: str) -> ConnectorType:
        """The loaded type; ``NotFoundError`` if unknown or if it failed to load (with the reason)."""
        found = self._types.get((kind, type_key))
        if found is not None:
            return found
        failure = self._failures.get((kind, type_key))
        if failure is not None:
            raise NotFoundError(
                f"{kind.value} type {type_key!r} failed to load: {failure.error}", field="type", type=type_key
            )
        raise NotFoundError(f"no {kind.value} type {type_key!r} is installed", field="type", type=type_key)

    def describe(self, kind: ConnectorKind | None = None) -> dict[str, Any]:
        """Every loaded type with its capabilities and config schema, and every load failure."""
        return {
            "types": [t.describe() for t in self.types(kind)],
            "failures": [f.describe() for f in self.failures if kind is None or f.kind is kind],
        }

    def validate_config(self, kind: ConnectorKind, type_key: str, config: Mapping[str, Any]) -> BaseModel:
        """Validate a config dict against the type's model.

        Raises ``InvalidInputError`` naming the first bad field as ``config.<field>`` (all of them in
        ``data["errors"]``), or naming ``type`` when the type is not available.
        """
        try:
            connector_type = self.get(kind, type_key)
        except NotFoundError as exc:
            raise InvalidInputError(exc.message, field="type") from None
        if not isinstance(config, Mapping):
            raise InvalidInputError("config must be an object", field="config")
        try:
            return connector_type.cls.Config.model_validate(dict(config))
        except ValidationError as exc:
            raise config_error(exc) from None

    def build(
        self,
        kind: ConnectorKind,
        type_key: str,
        config: Mapping[str, Any] | BaseModel,
        context: ConnectorContext,
    ) -> Connector:
        """An instance of the type configured from ``config`` (a dict to validate, or a validated model).

        Raises ``InvalidInputError`` naming the field for a bad config or an unavailable type.
        """
        if isinstance(config, BaseModel):
            try:
                connector_type = self.get(kind, type_key)
            except NotFoundError as exc:
                raise InvalidInputError(exc.message, field="type") from None
            model = config
            if not isinstance(model, connector_type.cls.Config):
                expected = connector_type.cls.Config.__name__
                raise InvalidInputError(f"config is not a {expected}", field="config")
        else:
            model = self.validate_config(kind, type_key, config)
            connector_type = self.get(kind, type_key)
        return connector_type.cls(model, context)

    def build_ca_gateway(
        self, type_key: str, config: Mapping[str, Any] | BaseModel, context: ConnectorContext
    ) -> CAGateway:
        return cast(CAGateway, self.build(ConnectorKind.CA_GATEWAY, type_key, config, context))

    def build_cert_store(
        self, type_key: str, config: Mapping[str, Any] | BaseModel, context: ConnectorContext
    ) -> CertificateStore:
        return cast(CertificateStore, self.build(ConnectorKind.CERT_STORE, type_key, config, context))

    def build_discovery_source(
        self, type_key: str, config: Mapping[str, Any] | BaseModel, context: ConnectorContext
    ) -> DiscoverySource:
        return cast(DiscoverySource, self.build(ConnectorKind.DISCOVERY_SOURCE, type_key, config, context))

    def build_notifier(
        self, type_key: str, config: Mapping[str, Any] | BaseModel, context: ConnectorContext
    ) -> Notifier:
        return cast(Notifier, self.build(ConnectorKind.NOTIFIER, type_key, config, context))
