"""A fake Azure Key Vault (certificates and their secrets) and the Microsoft Entra ID token endpoint in
front of it, following the documented REST API so that the real Azure SDK (``azure-keyvault-certificates``,
``azure-keyvault-secrets``, ``azure-identity`` over MSAL) drives it unchanged.

The token endpoint in front of it is :class:`~tests.support.fakes.entra_id.EntraIdApp`.

Key Vault (:class:`KeyVaultApp`), every call with ``?api-version=7.4`` (7.5, 7.6):

- a request without a valid bearer token gets 401 with ``WWW-Authenticate: Bearer
  authorization="<authority>/<tenant>", resource="https://vault.azure.net"`` — the challenge the SDK's
  policy answers by fetching a token for that tenant and resource;
- ``POST|PUT /certificates/{name}/import`` — ``{"value", "pwd", "policy", "attributes", "tags"}``: a new
  version; the value is a base64 PKCS#12 (``policy.secret_props.contentType`` application/x-pkcs12, the
  default) or PEM text (application/x-pem-file) holding the private key;
- ``GET /certificates`` (``maxresults`` 1-25, ``$skiptoken``) — ``{"value": [CertificateItem], "nextLink"}``,
  ordered by name;
- ``GET /certificates/{name}/versions`` — the same shape, one item per version, in no particular order
  (as Key Vault does: clients sort by ``attributes.created``);
- ``GET /certificates/{name}[/{version}]`` — a CertificateBundle (``id``, ``kid``, ``sid``, ``x5t``,
  ``cer``, ``attributes``, ``tags``, ``policy``); the latest version when none is named;
- ``GET /secrets/{name}[/{version}]`` — the certificate's secret: the PFX without password (base64) or the
  PEM, as Key Vault hands out a certificate with its key;
- ``DELETE /certificates/{name}`` — a DeletedCertificateBundle (``recoveryId``, ``deletedDate``,
  ``scheduledPurgeDate``; no ``recoveryId`` when soft delete is off); ``GET /deletedcertificates/{name}``;
  ``DELETE /deletedcertificates/{name}`` purges (204). A name in the deleted state cannot be imported
  again (409) until it is purged.

Errors are ``{"error": {"code", "message"}}``. Messages quote Key Vault's where they are documented; the
rest are illustrative.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from azure.keyvault.certificates._shared import http_challenge_cache as certificate_challenges
from azure.keyvault.secrets._shared import http_challenge_cache as secret_challenges
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12

from tests.support.fakes.base import App, FakeServer, Request, Response, TlsMaterial
from tests.support.fakes.entra_id import EntraIdApp

VAULT_RESOURCE = "https://vault.azure.net"
API_VERSIONS = frozenset({"7.4", "7.5", "7.6"})
PKCS12 = "application/x-pkcs12"
PEM = "application/x-pem-file"
NAME = re.compile(r"^[0-9a-zA-Z-]{1,127}$")
MAX_TAGS = 15


# --- Key Vault -----------------------------------------------------------------------------------------


@dataclass
class Version:
    version: str
    certificate: x509.Certificate
    chain: list[x509.Certificate]
    secret_value: str  # what GET /secrets hands out: base64 PFX without password, or PEM
    content_type: str
    key_type: str
    key_size: int | None
    curve: str | None
    exportable: bool
    enabled: bool
    tags: dict[str, str]
    created: int
    updated: int


@dataclass
class Entry:
    name: str
    versions: list[Version] = field(default_factory=list)
    deleted_at: int | None = None

    @property
    def latest(self) -> Version:
        return self.versions[-1]


class KeyVaultError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class KeyVaultApp(App):
    """One vault. ``authority`` (the Entra ID server's base URL) is named in the challenge."""

    name = "key-vault"

    def __init__(self, entra: EntraIdApp, *, soft_delete: bool = True, retention_days: int = 90) -> None:
        super().__init__()
        self.entra = entra
        self.authority = ""
        self.soft_delete = soft_delete
        self.retention_days = retention_days
        self.forbidden_clients: set[str] = set()  # authenticated, but no access policy grants them anything
        self.entries: dict[str, Entry] = {}  # by lower-case name: Key Vault names are case-insensitive
        self.challenges = 0  # 401 answers carrying the WWW-Authenticate challenge

    def error(self, status: int, message: str, code: str = "InternalServerError") -> Response:
        if status == 429:
            code = "Throttled"
        return Response.json(status, {"error": {"code": code, "message": message}})

    def _challenge(self, message: str) -> Response:
        with self.lock:
            self.challenges += 1
        response = self.error(401, message, "Unauthorized")
        response.headers["WWW-Authenticate"] = (
            f'Bearer authorization="{self.authority}/{self.entra.tenant_id}", resource="{VAULT_RESOURCE}"'
        )
        return response

    # --- dispatch ------------------------------------------------------------------------------------

    def route(self, request: Request) -> Response:
        header = request.headers.get("Authorization") or request.headers.get("authorization") or ""
        if not header.startswith("Bearer "):
            return self._challenge("AKV10000: Request is missing a Bearer or PoP token.")
        grant = self.entra.grant_for(header[7:])
        if grant is None:
            return self._challenge("AKV10032: Invalid issuer. The token is unknown or has expired.")
        if grant.resource != VAULT_RESOURCE:
            return self._challenge(
                f"AKV10022: Invalid audience. Expected {VAULT_RESOURCE}, found: {grant.resource}."
            )
        if grant.client_id in self.forbidden_clients:
            return self.error(
                403,
                f"The user, group or application 'appid={grant.client_id}' does not have certificates "
                "permission on key vault. Inner error: access denied by the vault's access policy.",
                "Forbidden",
            )
        version = request.arg("api-version")
        if version not in API_VERSIONS:
            return self.error(
                400,
                f"The specified version ({version}) is not recognized. Consider using the latest supported "
                f"version ({max(API_VERSIONS)}).",
                "BadParameter",
            )
        vault = f"https://{request.headers.get('Host', '127.0.0.1')}"
        try:
            return self._dispatch(request, vault)
        except KeyVaultError as exc:
            return self.error(exc.status, exc.message, exc.code)

    def _dispatch(self, request: Request, vault: str) -> Response:
        parts = [p for p in request.path.split("/") if p]
        method = request.method
        with self.lock:
            if parts[:1] == ["certificates"]:
                if len(parts) == 1 and method == "GET":
                    return Response.json(200, self._list(request, vault))
                if len(parts) == 3 and parts[2] == "import" and method in ("POST", "PUT"):
                    return Response.json(200, self._import(parts[1], request.json() or {}, vault))
                if len(parts) == 3 and parts[2] == "versions" and method == "GET":
                    return Response.json(200, self._versions(parts[1], request, vault))
                if len(parts) in (2, 3) and method == "GET":
                    entry = self._live(parts[1])
                    return Response.json(200, self._bundle(entry, self._version(entry, parts[2:]), vault))
                if len(parts) == 2 and method == "DELETE":
                    return Response.json(200, self._delete(parts[1], vault))
            if parts[:1] == ["secrets"] and len(parts) in (2, 3) and method == "GET":
                entry = self._live(parts[1])
                return Response.json(200, self._secret(entry, self._version(entry, parts[2:]), vault))
            if parts[:1] == ["deletedcertificates"] and len(parts) == 2:
                entry = self._deleted(parts[1])
                if method == "GET":
                    return Response.json(200, self._deleted_bundle(entry, vault))
                if method == "DELETE":
                    del self.entries[entry.name.lower()]
                    return Response(204)
        return self.error(
            404, f"The requested operation {method} {request.path} is not supported.", "NotFound"
        )

    # --- lookups -------------------------------------------------------------------------------------

    def _live(self, name: str) -> Entry:
        entry = self.entries.get(name.lower())
        if entry is None or entry.deleted_at is not None or not entry.versions:
            raise KeyVaultError(
                404,
                "CertificateNotFound",
                f"A certificate with (name/id) {name} was not found in this key vault. If you recently "
                "deleted this certificate you may be able to recover it using the correct recovery command.",
            )
        return entry

    def _deleted(self, name: str) -> Entry:
        entry = self.entries.get(name.lower())
        if entry is None or entry.deleted_at is None:
            raise KeyVaultError(404, "CertificateNotFound", f"Deleted Certificate not found: {name}")
        return entry

    def _version(self, entry: Entry, rest: list[str]) -> Version:
        if not rest or not rest[0]:
            return entry.latest
        for version in entry.versions:
            if version.version == rest[0].lower():
                return version
        raise KeyVaultError(
            404,
            "CertificateNotFound",
            f"A certificate with (name/id) {entry.name}/{rest[0]} was not found in this key vault.",
        )

    # --- representations ----------------------------------------------------------------------------

    def _attributes(self, version: Version) -> dict[str, Any]:
        cert = version.certificate
        return {
            "enabled": version.enabled,
            "nbf": int(cert.not_valid_before_utc.timestamp()),
            "exp": int(cert.not_valid_after_utc.timestamp()),
            "created": version.created,
            "updated": version.updated,
            "recoveryLevel": "Recoverable+Purgeable" if self.soft_delete else "Purgeable",
            "recoverableDays": self.retention_days if self.soft_delete else 0,
        }

    def _x5t(self, version: Version) -> str:
        der = version.certificate.public_bytes(serialization.Encoding.DER)
        return _b64url(hashlib.sha1(der, usedforsecurity=False).digest())

    def _item(self, entry: Entry, version: Version, vault: str, *, with_version: bool) -> dict[str, Any]:
        suffix = f"/{version.version}" if with_version else ""
        return {
            "id": f"{vault}/certificates/{entry.name}{suffix}",
            "x5t": self._x5t(version),
            "attributes": self._attributes(version),
            "tags": dict(version.tags),
        }

    def _policy(self, entry: Entry, version: Version, vault: str) -> dict[str, Any]:
        cert = version.certificate
        try:
            sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            dns_names = sans.get_values_for_type(x509.DNSName)
        except x509.ExtensionNotFound:
            dns_names = []
        key_props: dict[str, Any] = {
            "exportable": version.exportable,
            "kty": version.key_type,
            "reuse_key": False,
        }
        if version.key_size:
            key_props["key_size"] = version.key_size
        if version.curve:
            key_props["crv"] = version.curve
        months = max(1, round((cert.not_valid_after_utc - cert.not_valid_before_utc).days / 30))
        return {
            "id": f"{vault}/certificates/{entry.name}/policy",
            "key_props": key_props,
            "secret_props": {"contentType": version.content_type},
            "x509_props": {
                "subject": cert.subject.rfc4514_string(),
                "sans": {"dns_names": dns_names} if dns_names else {},
                "ekus": ["1.3.6.1.5.5.7.3.1"],
                "key_usage": ["digitalSignature"],
                "validity_months": months,
                "basic_constraints": {"ca": False},
            },
            "lifetime_actions": [
                {"trigger": {"lifetime_percentage": 80}, "action": {"action_type": "EmailContacts"}}
            ],
            "issuer": {"name": "Unknown"},
            "attributes": {"enabled": True, "created": version.created, "updated": version.updated},
        }

    def _bundle(self, entry: Entry, version: Version, vault: str) -> dict[str, Any]:
        return {
            "id": f"{vault}/certificates/{entry.name}/{version.version}",
            "kid": f"{vault}/keys/{entry.name}/{version.version}",
            "sid": f"{vault}/secrets/{entry.name}/{version.version}",
            "x5t": self._x5t(version),
            "cer": base64.b64encode(version.certificate.public_bytes(serialization.Encoding.DER)).decode(),
            "attributes": self._attributes(version),
            "tags": dict(version.tags),
            "policy": self._policy(entry, version, vault),
        }

    def _deleted_bundle(self, entry: Entry, vault: str) -> dict[str, Any]:
        body = self._bundle(entry, entry.latest, vault)
        deleted = entry.deleted_at or int(time.time())
        if self.soft_delete:
            body["recoveryId"] = f"{vault}/deletedcertificates/{entry.name}"
            body["scheduledPurgeDate"] = deleted + self.retention_days * 86400
        body["deletedDate"] = deleted
        return body

    def _secret(self, entry: Entry, version: Version, vault: str) -> dict[str, Any]:
        if not version.exportable:
            raise KeyVaultError(
                403, "Forbidden", "Operation get is not allowed on a non-exportable certificate's secret."
            )
        return {
            "value": version.secret_value,
            "contentType": version.content_type,
            "id": f"{vault}/secrets/{entry.name}/{version.version}",
            "kid": f"{vault}/keys/{entry.name}/{version.version}",
            "attributes": self._attributes(version),
            "tags": dict(version.tags),
            "managed": True,
        }

    # --- paging ----------------------------------------------------------------------------------------

    @staticmethod
    def _page_size(request: Request) -> int:
        raw = request.arg("maxresults")
        if raw is None:
            return 25
        if not raw.isdigit() or not 1 <= int(raw) <= 25:
            raise KeyVaultError(
                400, "BadParameter", f"Invalid value '{raw}' for maxresults: it must be between 1 and 25."
            )
        return int(raw)

    @staticmethod
    def _skip(request: Request) -> str | None:
        token = request.arg("$skiptoken")
        if not token:
            return None
        try:
            return base64.urlsafe_b64decode(token.encode()).decode()
        except ValueError:
            raise KeyVaultError(400, "BadParameter", "The $skiptoken is invalid.") from None

    @staticmethod
    def _next_link(vault: str, path: str, request: Request, size: int, last: str) -> str:
        token = base64.urlsafe_b64encode(last.encode()).decode()
        return (
            f"{vault}{path}?api-version={request.arg('api-version')}"
            f"&$skiptoken={quote(token)}&maxresults={size}"
        )

    def _list(self, request: Request, vault: str) -> dict[str, Any]:
        size, after = self._page_size(request), self._skip(request)
        live = sorted(
            (e for e in self.entries.values() if e.deleted_at is None and e.versions),
            key=lambda e: e.name.lower(),
        )
        if after is not None:
            live = [e for e in live if e.name.lower() > after]
        page = live[:size]
        body: dict[str, Any] = {"value": [self._item(e, e.latest, vault, with_version=False) for e in page]}
        body["nextLink"] = (
            self._next_link(vault, "/certificates", request, size, page[-1].name.lower())
            if len(live) > size
            else None
        )
        return body

    def _versions(self, name: str, request: Request, vault: str) -> dict[str, Any]:
        entry = self._live(name)
        size, after = self._page_size(request), self._skip(request)
        # Key Vault promises no order; this one lists by version id, which is random.
        versions = sorted(entry.versions, key=lambda v: v.version)
        if after is not None:
            versions = [v for v in versions if v.version > after]
        page = versions[:size]
        body: dict[str, Any] = {"value": [self._item(entry, v, vault, with_version=True) for v in page]}
        body["nextLink"] = (
            self._next_link(vault, f"/certificates/{entry.name}/versions", request, size, page[-1].version)
            if len(versions) > size
            else None
        )
        return body

    # --- changes ----------------------------------------------------------------------------------------

    def _import(self, name: str, body: dict[str, Any], vault: str) -> dict[str, Any]:
        if not NAME.match(name):
            raise KeyVaultError(
                400,
                "BadParameter",
                f"The certificate name '{name}' is invalid: 1-127 characters of 0-9, a-z, A-Z and - only.",
            )
        existing = self.entries.get(name.lower())
        if existing is not None and existing.deleted_at is not None:
            raise KeyVaultError(
                409,
                "Conflict",
                f"Certificate {name} is currently in a deleted but recoverable state, and its name cannot be "
                "reused; in this state, the certificate can only be recovered or purged.",
            )
        policy = body.get("policy") or {}
        content_type = (policy.get("secret_props") or {}).get("contentType") or PKCS12
        exportable = (policy.get("key_props") or {}).get("exportable", True)
        tags = body.get("tags") or {}
        if not isinstance(tags, dict) or len(tags) > MAX_TAGS:
            raise KeyVaultError(400, "BadParameter", f"A certificate may have at most {MAX_TAGS} tags.")
        value = body.get("value")
        if not isinstance(value, str) or not value:
            raise KeyVaultError(400, "BadParameter", "The certificate content ('value') is required.")
        key, certificate, chain = self._read_material(value, body.get("pwd"), content_type)
        key_type, key_size, curve = self._key_facts(key)
        now = int(time.time())
        if content_type == PKCS12:
            pfx = pkcs12.serialize_key_and_certificates(
                None, key, certificate, chain or None, serialization.NoEncryption()
            )
            secret_value = base64.b64encode(pfx).decode()
        else:
            secret_value = (
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
                + b"".join(c.public_bytes(serialization.Encoding.PEM) for c in [certificate, *chain])
            ).decode()
        version = Version(
            version=uuid.uuid4().hex,
            certificate=certificate,
            chain=chain,
            secret_value=secret_value,
            content_type=content_type,
            key_type=key_type,
            key_size=key_size,
            curve=curve,
            exportable=bool(exportable),
            enabled=bool((body.get("attributes") or {}).get("enabled", True)),
            tags={str(k): str(v) for k, v in tags.items()},
            created=now,
            updated=now,
        )
        entry = existing or Entry(name=name)
        entry.versions.append(version)
        self.entries[name.lower()] = entry
        return self._bundle(entry, version, vault)

    @staticmethod
    def _read_material(
        value: str, password: Any, content_type: str
    ) -> tuple[Any, x509.Certificate, list[x509.Certificate]]:
        if content_type == PKCS12:
            try:
                data = base64.b64decode(value, validate=True)
                secret = password.encode() if isinstance(password, str) and password else None
                key, certificate, extra = pkcs12.load_key_and_certificates(data, secret)
            except ValueError:
                raise KeyVaultError(
                    400,
                    "BadParameter",
                    "The specified PKCS#12 X.509 certificate content can not be read. Please check if "
                    "certificate is in valid PKCS#12 format.",
                ) from None
            chain = list(extra)
        elif content_type == PEM:
            # The SDK sends the PEM base64-encoded like any other content; plain PEM text is taken too.
            try:
                text = value.encode() if value.lstrip().startswith("-----") else base64.b64decode(value)
            except ValueError:
                text = b""
            try:
                certificates = x509.load_pem_x509_certificates(text)
                match = re.search(
                    rb"-----BEGIN (?:RSA |EC )?PRIVATE KEY-----.+?-----END (?:RSA |EC )?PRIVATE KEY-----",
                    text,
                    re.S,
                )
                key = serialization.load_pem_private_key(match.group(0), None) if match else None
            except ValueError:
                raise KeyVaultError(
                    400,
                    "BadParameter",
                    "The specified PEM X.509 certificate content is in an unexpected format.",
                ) from None
            certificate, chain = certificates[0], certificates[1:]
        else:
            raise KeyVaultError(400, "BadParameter", f"The content type '{content_type}' is not supported.")
        if key is None:
            raise KeyVaultError(
                400,
                "BadParameter",
                "Private key is not specified in the specified X.509 PEM certificate content. Please specify "
                "private key in the X.509 PEM certificate content.",
            )
        if certificate is None:
            raise KeyVaultError(400, "BadParameter", "No certificate was found in the specified content.")
        public = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        if key.public_key().public_bytes(*public) != certificate.public_key().public_bytes(*public):
            raise KeyVaultError(
                400, "BadParameter", "The specified private key does not match the certificate's public key."
            )
        return key, certificate, chain

    @staticmethod
    def _key_facts(key: Any) -> tuple[str, int | None, str | None]:
        if isinstance(key, rsa.RSAPrivateKey):
            return "RSA", key.key_size, None
        if isinstance(key, ec.EllipticCurvePrivateKey):
            curves = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
            return "EC", None, curves.get(key.curve.name, key.curve.name)
        raise KeyVaultError(400, "BadParameter", "Only RSA and EC keys can be imported.")

    def _delete(self, name: str, vault: str) -> dict[str, Any]:
        entry = self._live(name)
        entry.deleted_at = int(time.time())
        body = self._deleted_bundle(entry, vault)
        if not self.soft_delete:
            del self.entries[entry.name.lower()]
        return body

    # --- for tests --------------------------------------------------------------------------------------

    def names(self) -> list[str]:
        with self.lock:
            return sorted(e.name for e in self.entries.values() if e.deleted_at is None and e.versions)

    def deleted_names(self) -> list[str]:
        with self.lock:
            return sorted(e.name for e in self.entries.values() if e.deleted_at is not None)

    def version_count(self, name: str) -> int:
        with self.lock:
            entry = self.entries.get(name.lower())
            return len(entry.versions) if entry else 0


@dataclass
class AzureCloud:
    """A running tenant and vault: what a connector's config needs, and the apps to inspect."""

    vault_url: str
    authority_host: str
    tenant_id: str
    client_id: str
    client_secret: str
    ca_bundle: str  # path of the PEM the listeners' certificates chain to
    vault: KeyVaultApp
    entra: EntraIdApp


@contextmanager
def running_key_vault(directory: Path, *, soft_delete: bool = True) -> Iterator[AzureCloud]:
    """Entra ID and a vault on two HTTPS listeners on 127.0.0.1, with a certificate from our own pki."""
    tls = TlsMaterial.create(directory, "azure")
    ca_bundle = directory / "azure-ca.pem"
    ca_bundle.write_text(tls.ca_pem)
    tenant_id, client_id = str(uuid.uuid4()), str(uuid.uuid4())
    client_secret = secrets.token_urlsafe(24)
    entra = EntraIdApp(tenant_id, {client_id: client_secret})
    vault = KeyVaultApp(entra, soft_delete=soft_delete)
    with FakeServer(entra, tls) as entra_server, FakeServer(vault, tls) as vault_server:
        vault.authority = entra_server.base_url
        with _forgetting_challenges(vault_server.base_url):
            yield AzureCloud(
                vault_url=vault_server.base_url,
                authority_host=entra_server.base_url,
                tenant_id=tenant_id,
                client_id=client_id,
                client_secret=client_secret,
                ca_bundle=str(ca_bundle),
                vault=vault,
                entra=entra,
            )


@contextmanager
def _forgetting_challenges(vault_url: str) -> Iterator[None]:
    """Drops the SDK's cached challenge for ``vault_url`` before and after a fake vault lives there.

    The Key Vault clients cache each vault's challenge (its tenant) per host and port, for the life
    of the process. A later fake that the OS gives the same loopback port has another tenant, and a
    stale challenge would make the credential refuse to ask for a token.
    """
    for cache in (certificate_challenges, secret_challenges):
        cache.remove_challenge_for_url(vault_url)
    try:
        yield
    finally:
        for cache in (certificate_challenges, secret_challenges):
            cache.remove_challenge_for_url(vault_url)
