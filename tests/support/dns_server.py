"""A small authoritative DNS server on loopback for tests, built on dnspython.

It answers over UDP and TCP on one port, accepts RFC 2136 UPDATEs signed with a known TSIG key for its
zones, and serves what they stored. Every A query without a stored answer gets ``default_ipv4``
(127.0.0.1), so an ACME server resolving through it fetches http-01 challenges from loopback; AAAA
queries get an empty answer so validation never tries IPv6.
"""

from __future__ import annotations

import socket
import socketserver
import struct
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.tsig
import dns.update

_SOA = "ns1.{zone} hostmaster.{zone} 1 3600 600 86400 60"


@dataclass(frozen=True)
class UpdateRecord:
    """One change an accepted UPDATE made: ``action`` is "add" or "delete"."""

    action: str
    name: str
    rdtype: str
    value: str


class DnsServer:
    """Authoritative for ``zones``; UPDATEs must be signed with one of ``tsig_keys`` (name → base64)."""

    def __init__(
        self,
        zones: Iterable[str],
        *,
        tsig_keys: Mapping[str, str],
        tsig_algorithm: str = "hmac-sha256",
        default_ipv4: str = "127.0.0.1",
    ) -> None:
        self.zones = [dns.name.from_text(zone) for zone in zones]
        self.keyring = {
            dns.name.from_text(name): dns.tsig.Key(name, secret, tsig_algorithm)
            for name, secret in tsig_keys.items()
        }
        self.default_ipv4 = default_ipv4
        self.updates: list[UpdateRecord] = []
        self.refused_updates = 0
        self.port = 0
        self._records: dict[tuple[dns.name.Name, dns.rdatatype.RdataType], dict[dns.rdata.Rdata, int]] = {}
        self._lock = threading.Lock()
        self._servers: list[socketserver.BaseServer] = []
        self._threads: list[threading.Thread] = []

    # --- lifecycle ------------------------------------------------------------------------------

    def __enter__(self) -> DnsServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        server = self

        class UdpHandler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                data, sock = self.request
                reply = server.answer(data, max_size=512)
                if reply is not None:
                    sock.sendto(reply, self.client_address)

        class TcpHandler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                conn: socket.socket = self.request
                conn.settimeout(10)
                while True:
                    header = _recv_exact(conn, 2)
                    if header is None:
                        return
                    body = _recv_exact(conn, struct.unpack("!H", header)[0])
                    if body is None:
                        return
                    reply = server.answer(body, max_size=65535)
                    if reply is None:
                        return
                    conn.sendall(struct.pack("!H", len(reply)) + reply)

        # UDP and TCP must share one port number: take a free UDP port and retry if TCP has it.
        for _ in range(50):
            udp = socketserver.ThreadingUDPServer(("127.0.0.1", 0), UdpHandler)
            port = udp.server_address[1]
            try:
                tcp = socketserver.ThreadingTCPServer(("127.0.0.1", port), TcpHandler)
            except OSError:
                udp.server_close()
                continue
            break
        else:
            raise RuntimeError("no free port for the test DNS server")
        udp.daemon_threads = True
        tcp.daemon_threads = True
        self.port = port
        self._servers = [udp, tcp]
        for srv in self._servers:
            thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        for srv in self._servers:
            srv.shutdown()
            srv.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._servers = []
        self._threads = []

    # --- what tests look at ---------------------------------------------------------------------

    def txt(self, name: str) -> list[str]:
        """The TXT strings stored for ``name`` (absolute or not; a trailing dot is optional)."""
        key = (dns.name.from_text(name), dns.rdatatype.TXT)
        with self._lock:
            rdatas = list(self._records.get(key, {}))
        return sorted(b"".join(r.strings).decode() for r in rdatas)  # type: ignore[attr-defined]

    # --- the protocol ---------------------------------------------------------------------------

    def answer(self, wire: bytes, *, max_size: int) -> bytes | None:
        """The reply to one DNS message, or None when it is not worth answering."""
        try:
            message = dns.message.from_wire(wire, keyring=self.keyring)
        except (dns.message.UnknownTSIGKey, dns.tsig.BadSignature, dns.tsig.BadTime, dns.tsig.BadKey):
            return self._refuse_unsigned(wire, dns.rcode.NOTAUTH)
        except dns.exception.DNSException:
            return None
        if message.flags & dns.flags.QR:
            return None
        if message.opcode() == dns.opcode.UPDATE:
            assert isinstance(message, dns.update.UpdateMessage)
            response = self._update(message)
        elif message.opcode() == dns.opcode.QUERY:
            response = self._query(message)
        else:
            response = dns.message.make_response(message)
            response.set_rcode(dns.rcode.NOTIMP)
        payload = message.payload if message.edns >= 0 else max_size
        try:
            return response.to_wire(max_size=min(max_size, max(payload, 512)))
        except dns.exception.TooBig:
            truncated = dns.message.make_response(message)
            truncated.flags |= dns.flags.TC
            return truncated.to_wire()

    def _refuse_unsigned(self, wire: bytes, rcode: dns.rcode.Rcode) -> bytes | None:
        try:
            message = dns.message.from_wire(wire, keyring=False)
        except dns.exception.DNSException:
            return None
        if message.opcode() == dns.opcode.UPDATE:
            with self._lock:
                self.refused_updates += 1
        response = dns.message.make_response(message)
        response.set_rcode(rcode)
        return response.to_wire()

    def _zone_of(self, name: dns.name.Name) -> dns.name.Name | None:
        matches = [zone for zone in self.zones if name.is_subdomain(zone)]
        return max(matches, key=len) if matches else None

    def _update(self, message: dns.update.UpdateMessage) -> dns.message.Message:
        response = dns.message.make_response(message)
        zone = message.zone[0].name if message.zone else None
        if not message.had_tsig:
            with self._lock:
                self.refused_updates += 1
            response.set_rcode(dns.rcode.REFUSED)
            return response
        if zone is None or zone not in self.zones:
            response.set_rcode(dns.rcode.NOTAUTH)
            return response
        if any(not rrset.name.is_subdomain(zone) for rrset in message.update):
            response.set_rcode(dns.rcode.NOTZONE)
            return response
        with self._lock:
            for rrset in message.update:
                self._apply(rrset)
        return response

    def _apply(self, rrset: dns.rrset.RRset) -> None:
        deleting = rrset.deleting
        if deleting is None:
            stored = self._records.setdefault((rrset.name, rrset.rdtype), {})
            for rdata in rrset:
                stored[rdata] = rrset.ttl
                self.updates.append(_change("add", rrset, rdata))
            return
        if deleting == dns.rdataclass.ANY:
            keys = [
                key
                for key in self._records
                if key[0] == rrset.name and rrset.rdtype in (dns.rdatatype.ANY, key[1])
            ]
            for key in keys:
                for rdata in self._records.pop(key):
                    self.updates.append(_change("delete", rrset, rdata))
            return
        stored = self._records.get((rrset.name, rrset.rdtype), {})
        for rdata in rrset:
            if stored.pop(rdata, None) is not None:
                self.updates.append(_change("delete", rrset, rdata))
        if not stored:
            self._records.pop((rrset.name, rrset.rdtype), None)

    def _query(self, message: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(message)
        response.flags |= dns.flags.AA
        for question in message.question:
            name, rdtype = question.name, question.rdtype
            with self._lock:
                stored = dict(self._records.get((name, rdtype), {}))
            zone = self._zone_of(name)
            if stored:
                rrset = dns.rrset.RRset(name, dns.rdataclass.IN, rdtype)
                for rdata, ttl in stored.items():
                    rrset.add(rdata, ttl)
                response.answer.append(rrset)
            elif rdtype == dns.rdatatype.A:
                response.answer.append(dns.rrset.from_text(name, 60, "IN", "A", self.default_ipv4))
            elif rdtype == dns.rdatatype.SOA and zone is not None and name == zone:
                response.answer.append(dns.rrset.from_text(name, 60, "IN", "SOA", _SOA.format(zone=zone)))
            elif zone is not None:
                # An empty answer from an authoritative server carries the zone's SOA (RFC 2308).
                response.authority.append(dns.rrset.from_text(zone, 60, "IN", "SOA", _SOA.format(zone=zone)))
        return response


def _change(action: str, rrset: dns.rrset.RRset, rdata: dns.rdata.Rdata) -> UpdateRecord:
    value = rdata.to_text()
    if rrset.rdtype == dns.rdatatype.TXT:
        value = b"".join(rdata.strings).decode()  # type: ignore[attr-defined]
    return UpdateRecord(action, rrset.name.to_text(), dns.rdatatype.to_text(rrset.rdtype), value)


def _recv_exact(conn: socket.socket, size: int) -> bytes | None:
    chunks = b""
    while len(chunks) < size:
        try:
            chunk = conn.recv(size - len(chunks))
        except OSError:
            return None
        if not chunk:
            return None
        chunks += chunk
    return chunks
