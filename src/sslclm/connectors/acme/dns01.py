"""Publishing dns-01 TXT records: RFC 2136 dynamic update with TSIG, or an operator's hook script; and
waiting until name servers answer them.

Failures here are the DNS side's, not the CA's, so they raise :class:`~sslclm.errors.ConnectorError`:
retryable when the server was unreachable or the record is not visible yet, not retryable when the
server refused the key or the name lies outside the configured zone.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import dns.exception
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.tsig
import dns.update

from sslclm.errors import ConnectorError

from .config import Dns01Config, HookConfig, Rfc2136Config, split_host_port

_NOT_RETRYABLE_RCODES = {dns.rcode.REFUSED, dns.rcode.NOTAUTH, dns.rcode.NOTZONE, dns.rcode.FORMERR}


class TxtPublisher(Protocol):
    def add(self, fqdn: str, value: str) -> None: ...

    def remove(self, fqdn: str, value: str) -> None: ...

    def default_nameservers(self) -> list[tuple[str, int]]: ...


def resolve_host(host: str, port: int) -> str:
    """An IP address for ``host`` (dnspython's query functions take addresses only)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ConnectorError(f"cannot resolve DNS server {host}: {exc}") from None
    return str(infos[0][4][0])


class Rfc2136Publisher:
    """Adds and deletes single TXT records with signed UPDATE messages over TCP."""

    def __init__(self, settings: Rfc2136Config) -> None:
        self.settings = settings
        self.zone = dns.name.from_text(settings.zone)
        self.key_name = dns.name.from_text(settings.tsig_key_name)

    def default_nameservers(self) -> list[tuple[str, int]]:
        return [(self.settings.server, self.settings.port)]

    def _relative(self, fqdn: str) -> dns.name.Name:
        name = dns.name.from_text(fqdn)
        if not name.is_subdomain(self.zone):
            raise ConnectorError(
                f"{fqdn} is not in the zone {self.settings.zone} configured for dns-01 updates",
                retryable=False,
                field="dns01.provider.zone",
            )
        return name.relativize(self.zone)

    def _message(self) -> dns.update.UpdateMessage:
        settings = self.settings
        key = dns.tsig.Key(self.key_name, settings.tsig_secret.get_secret_value(), settings.tsig_algorithm)
        return dns.update.UpdateMessage(
            self.zone, keyring={self.key_name: key}, keyname=self.key_name, keyalgorithm=key.algorithm
        )

    def add(self, fqdn: str, value: str) -> None:
        update = self._message()
        update.add(self._relative(fqdn), self.settings.ttl, dns.rdatatype.TXT, _txt(value))
        self._send(update, f"add TXT {fqdn}")

    def remove(self, fqdn: str, value: str) -> None:
        update = self._message()
        update.delete(self._relative(fqdn), dns.rdatatype.TXT, _txt(value))
        self._send(update, f"delete TXT {fqdn}")

    def _send(self, update: dns.update.UpdateMessage, action: str) -> None:
        settings = self.settings
        where = f"{settings.server}:{settings.port}"
        address = resolve_host(settings.server, settings.port)
        try:
            response = dns.query.tcp(update, address, port=settings.port, timeout=settings.timeout_seconds)
        except (dns.tsig.PeerError, dns.exception.FormError) as exc:
            raise ConnectorError(
                f"{action}: {where} did not accept the TSIG key {settings.tsig_key_name} "
                f"(name, secret or algorithm wrong?): {exc}",
                retryable=False,
                field="dns01.provider.tsig_key_name",
            ) from None
        except dns.exception.Timeout:
            raise ConnectorError(f"{action}: DNS server {where} did not answer in time") from None
        except (OSError, dns.exception.DNSException) as exc:
            raise ConnectorError(f"{action}: cannot reach DNS server {where}: {exc}") from None
        rcode = response.rcode()
        if rcode != dns.rcode.NOERROR:
            raise ConnectorError(
                f"{action}: DNS server {where} answered {dns.rcode.to_text(rcode)}",
                retryable=rcode not in _NOT_RETRYABLE_RCODES,
            )


def _txt(value: str) -> str:
    # Challenge values are base64url, so quoting needs no escaping.
    return f'"{value}"'


class HookPublisher:
    """Runs ``<command...> add|remove <record name> <value>``; exit status 0 means done."""

    def __init__(self, settings: HookConfig) -> None:
        self.settings = settings

    def default_nameservers(self) -> list[tuple[str, int]]:
        return []

    def add(self, fqdn: str, value: str) -> None:
        self._run("add", fqdn, value)

    def remove(self, fqdn: str, value: str) -> None:
        self._run("remove", fqdn, value)

    def _run(self, action: str, fqdn: str, value: str) -> None:
        command = [*self.settings.command, action, fqdn, value]
        try:
            completed = subprocess.run(
                command,
                capture_output=True,
                timeout=self.settings.timeout_seconds,
                check=False,
                env=hook_environment(),
            )
        except FileNotFoundError:
            raise ConnectorError(
                f"the dns-01 hook {command[0]} does not exist",
                retryable=False,
                field="dns01.provider.command",
            ) from None
        except PermissionError:
            raise ConnectorError(
                f"the dns-01 hook {command[0]} is not executable",
                retryable=False,
                field="dns01.provider.command",
            ) from None
        except subprocess.TimeoutExpired:
            raise ConnectorError(
                f"the dns-01 hook ({action} {fqdn}) ran longer than {self.settings.timeout_seconds:g} s"
            ) from None
        if completed.returncode != 0:
            # Only the last line of its error output: enough to diagnose, little room for leaking.
            lines = completed.stderr.decode(errors="replace").strip().splitlines()
            reason = f": {lines[-1][:200]}" if lines else ""
            raise ConnectorError(
                f"the dns-01 hook ({action} {fqdn}) exited with status {completed.returncode}{reason}"
            )


def hook_environment() -> dict[str, str]:
    """The worker's environment without SSL-CLM's own settings: they may carry the master key."""
    return {name: value for name, value in os.environ.items() if not name.upper().startswith("SSLCLM_")}


def publisher_for(settings: Dns01Config) -> TxtPublisher:
    provider = settings.provider
    if isinstance(provider, Rfc2136Config):
        return Rfc2136Publisher(provider)
    return HookPublisher(provider)


def txt_values(address: str, port: int, fqdn: str, timeout: float) -> set[str]:
    """The TXT strings a name server answers for ``fqdn`` (UDP, TCP when truncated)."""
    query = dns.message.make_query(fqdn, dns.rdatatype.TXT)
    response, _ = dns.query.udp_with_fallback(query, address, port=port, timeout=timeout)
    values: set[str] = set()
    name = dns.name.from_text(fqdn)
    for rrset in response.answer:
        if rrset.name == name and rrset.rdtype == dns.rdatatype.TXT:
            values.update(b"".join(rdata.strings).decode() for rdata in rrset)
    return values


def wait_until_visible(
    records: Sequence[tuple[str, str]],
    nameservers: Sequence[tuple[str, int]],
    settings: Dns01Config,
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Wait the fixed delay, then until every name server answers every (name, value).

    Raises a retryable :class:`ConnectorError` naming the first missing record after the timeout.
    """
    if settings.propagation_delay_seconds:
        sleep(settings.propagation_delay_seconds)
    if not records or not nameservers:
        return
    servers = [(resolve_host(host, port), port, f"{host}:{port}") for host, port in nameservers]
    deadline = time.monotonic() + settings.propagation_timeout_seconds
    pending = [(fqdn, value, server) for fqdn, value in records for server in servers]
    last_error = ""
    while True:
        still: list[tuple[str, str, tuple[str, int, str]]] = []
        for fqdn, value, server in pending:
            address, port, _ = server
            try:
                visible = value in txt_values(
                    address, port, fqdn, timeout=min(5.0, settings.propagation_poll_seconds + 2)
                )
            except (OSError, dns.exception.DNSException) as exc:
                visible, last_error = False, f" (last error: {exc})"
            if not visible:
                still.append((fqdn, value, server))
        pending = still
        if not pending:
            return
        if time.monotonic() >= deadline:
            fqdn, _, (_, _, label) = pending[0]
            raise ConnectorError(
                f"the dns-01 TXT record {fqdn} is not visible at {label} after "
                f"{settings.propagation_timeout_seconds:g} s{last_error}"
            )
        sleep(settings.propagation_poll_seconds)


def nameservers_for(settings: Dns01Config, publisher: TxtPublisher) -> list[tuple[str, int]]:
    if settings.check_nameservers:
        return [split_host_port(item, 53) for item in settings.check_nameservers]
    return publisher.default_nameservers()
