"""What a connector can do, declared up front so the platform asks before it calls."""

from __future__ import annotations

from enum import StrEnum


class ConnectorKind(StrEnum):
    """The four kinds of connector; each has its own entry-point group."""

    CA_GATEWAY = "ca-gateway"
    CERT_STORE = "cert-store"
    DISCOVERY_SOURCE = "discovery-source"
    NOTIFIER = "notifier"

    @property
    def entry_point_group(self) -> str:
        return _GROUPS[self]


_GROUPS: dict[ConnectorKind, str] = {
    ConnectorKind.CA_GATEWAY: "sslclm.ca_gateways",
    ConnectorKind.CERT_STORE: "sslclm.cert_stores",
    ConnectorKind.DISCOVERY_SOURCE: "sslclm.discovery_sources",
    ConnectorKind.NOTIFIER: "sslclm.notifiers",
}


class Capability(StrEnum):
    """One thing a connector may declare it does."""

    # CA gateways
    ISSUE = "issue"
    REVOKE = "revoke"
    ASYNC_ISSUE = "async-issue"  # issue() may answer "pending"; the platform then polls collect()
    ARI = "ari"  # renewal_info(): the CA suggests when to renew (RFC 9773)
    LIST = "list"  # list_issued(): the CA can enumerate what it issued
    SERVER_KEYGEN = "server-keygen"  # the CA can generate the key pair itself and return it
    # certificate stores
    INVENTORY = "inventory"
    ADD = "add"
    REMOVE = "remove"
    CREATE = "create"
    RELOAD = "reload"
    AGENT_KEYGEN = "agent-keygen"  # runs on an agent that generates the key on its host; it never leaves
    # discovery sources
    DISCOVER = "discover"
    # notifiers
    SEND = "send"


# The method each capability stands for; capabilities without one are plain flags.
CAPABILITY_METHODS: dict[Capability, str] = {
    Capability.ISSUE: "issue",
    Capability.ASYNC_ISSUE: "collect",
    Capability.REVOKE: "revoke",
    Capability.ARI: "renewal_info",
    Capability.LIST: "list_issued",
    Capability.INVENTORY: "inventory",
    Capability.ADD: "add",
    Capability.REMOVE: "remove",
    Capability.CREATE: "create",
    Capability.RELOAD: "reload",
    Capability.DISCOVER: "discover",
    Capability.SEND: "send",
}

KIND_CAPABILITIES: dict[ConnectorKind, frozenset[Capability]] = {
    ConnectorKind.CA_GATEWAY: frozenset(
        {
            Capability.ISSUE,
            Capability.REVOKE,
            Capability.ASYNC_ISSUE,
            Capability.ARI,
            Capability.LIST,
            Capability.SERVER_KEYGEN,
        }
    ),
    ConnectorKind.CERT_STORE: frozenset(
        {
            Capability.INVENTORY,
            Capability.ADD,
            Capability.REMOVE,
            Capability.CREATE,
            Capability.RELOAD,
            Capability.AGENT_KEYGEN,
        }
    ),
    ConnectorKind.DISCOVERY_SOURCE: frozenset({Capability.DISCOVER}),
    ConnectorKind.NOTIFIER: frozenset({Capability.SEND}),
}
