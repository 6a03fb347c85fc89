"""The ACME account: its key (EC P-256, made on first use, sealed at rest) and its registration.

State entries:

- ``account/key`` — the account key as PKCS#8 DER sealed with ``context.secrets`` (purpose
  ``acme-account-key``); created with ``put_if_absent`` so concurrent workers agree on one key;
- ``account/url/<sha256 of the directory URL>`` — the account URL at that server, so pointing the
  connection at another server registers there instead of using a URL it does not know.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import cast

from acme import client, messages
from acme import errors as acme_errors
from josepy.jwa import ES256
from josepy.jwk import JWK, JWKEC

from sslclm.errors import CARejectedError, ConnectorError, InvalidInputError
from sslclm.pki import generate_private_key, load_private_key_der, private_key_to_pkcs8_der
from sslclm.spi import ConnectorContext

from .config import AcmeConfig
from .transport import Session, call

KEY_STATE = "account/key"
KEY_PURPOSE = "acme-account-key"
USER_AGENT = "sslclm-acme"


def account_url_key(directory_url: str) -> str:
    return "account/url/" + hashlib.sha256(directory_url.encode()).hexdigest()[:32]


class Account:
    """Opens sessions with the ACME server as this connection's account."""

    def __init__(self, settings: AcmeConfig, context: ConnectorContext) -> None:
        self.settings = settings
        self.context = context
        self._lock = threading.Lock()
        self._directory_json: dict[str, object] | None = None
        self._key: JWKEC | None = None

    # --- pieces ---------------------------------------------------------------------------------

    def verify(self) -> bool | str:
        """What ``requests`` should verify the server's TLS certificate against."""
        bundle = self.settings.ca_bundle
        if bundle is None:
            return True
        if "-----BEGIN CERTIFICATE-----" not in bundle:
            if not Path(bundle).is_file():
                raise InvalidInputError(f"the CA bundle {bundle} does not exist", field="ca_bundle")
            return bundle
        # requests takes trust anchors from a file only; keep one per distinct bundle text.
        path = (
            self.context.data_dir / f"acme-ca-bundle-{hashlib.sha256(bundle.encode()).hexdigest()[:16]}.pem"
        )
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            tmp.write_text(bundle)
            tmp.replace(path)
        return str(path)

    def network(self, key: JWK | None = None) -> client.ClientNetwork:
        net = client.ClientNetwork(
            key,
            alg=ES256,
            # ``verify_ssl`` goes straight to requests' ``verify``, which also takes a CA file path.
            verify_ssl=cast(bool, self.verify()),
            user_agent=USER_AGENT,
            timeout=self.settings.request_timeout_seconds,
        )
        return net

    def directory(self, net: client.ClientNetwork) -> messages.Directory:
        """The server's directory; fetched once per instance (it is a static document)."""
        with self._lock:
            cached = self._directory_json
        if cached is None:
            url = self.settings.directory_url
            response = call("fetch directory", lambda: net.get(url))
            body = call("read directory", response.json)
            if not isinstance(body, dict) or "newNonce" not in body or "newOrder" not in body:
                raise ConnectorError(
                    f"{url} is not an ACME directory", retryable=False, field="directory_url"
                )
            with self._lock:
                self._directory_json = body
            cached = body
        return call("read directory", lambda: messages.Directory.from_json(dict(cached)))

    def key(self, *, create: bool = True) -> JWKEC | None:
        """The account key; made and stored on first use unless ``create`` is False."""
        with self._lock:
            if self._key is not None:
                return self._key
        state = self.context.state
        sealed = state.get(KEY_STATE)
        if sealed is None:
            if not create:
                return None
            fresh = self.context.secrets.seal(
                private_key_to_pkcs8_der(generate_private_key("EC-P256")), KEY_PURPOSE
            )
            winner = state.put_if_absent(KEY_STATE, fresh)
            sealed = fresh if winner is None else winner
            if winner is None:
                self.context.logger.info("created ACME account key for %s", self.context.connection_id)
        private = load_private_key_der(self.context.secrets.unseal(sealed, KEY_PURPOSE))
        key = JWKEC(key=private)
        with self._lock:
            self._key = key
        return key

    def forget_registration(self) -> None:
        self.context.state.delete(account_url_key(self.settings.directory_url))

    # --- sessions -------------------------------------------------------------------------------

    def anonymous_session(self) -> Session:
        """A session that can only GET (directory, renewalInfo, a management API)."""
        net = self.network()
        try:
            return Session(self.directory(net), net)
        except BaseException:
            net.session.close()
            raise

    def session(self, key: JWKEC | None = None, *, register: bool = True) -> Session:
        """A session signed by the account key, registering the account first if this server has not
        seen it; with ``register=False`` requests are signed with the bare key (no account URL yet).
        """
        key = key or self.key()
        assert key is not None
        net = self.network(key)
        try:
            directory = self.directory(net)
            session = Session(directory, net)
            if not register:
                return session
            url = self.context.state.get(account_url_key(self.settings.directory_url))
            account_url = url.decode() if url is not None else self._register(session, key)
            net.account = messages.RegistrationResource(body=messages.Registration(), uri=account_url)
            return session
        except BaseException:
            net.session.close()
            raise

    def _register(self, session: Session, key: JWKEC) -> str:
        settings = self.settings
        meta = session.directory.meta
        if meta.external_account_required and settings.eab_kid is None:
            raise CARejectedError(
                "the ACME server requires external account binding: set eab_kid and eab_hmac_key",
                field="eab_kid",
            )
        terms = meta.terms_of_service
        if terms and not settings.terms_of_service_agreed:
            raise CARejectedError(
                f"the ACME server requires agreeing to its terms of service ({terms}): "
                "set terms_of_service_agreed",
                field="terms_of_service_agreed",
            )
        binding = None
        if settings.eab_kid is not None and settings.eab_hmac_key is not None:
            binding = messages.ExternalAccountBinding.from_data(
                account_public_key=key.public_key(),
                kid=settings.eab_kid,
                hmac_key=settings.eab_hmac_key.get_secret_value().strip(),
                directory=session.directory,
                hmac_alg=settings.eab_hmac_algorithm,
            )
        registration = messages.NewRegistration.from_data(
            contact=tuple(f"mailto:{email}" for email in settings.contact_emails),
            terms_of_service_agreed=True if settings.terms_of_service_agreed else None,
            external_account_binding=binding,
        )

        def register() -> str:
            try:
                resource = session.client.new_account(registration)
            except acme_errors.ConflictError as existing:
                # RFC 8555 7.3.1: the key already has an account there; its URL is all we need.
                return existing.location
            if not resource.uri:
                raise ValueError("the new account has no Location")
            return str(resource.uri)

        account_url = call("register account", register)
        self.context.state.put(account_url_key(settings.directory_url), account_url.encode())
        self.context.logger.info("registered ACME account %s for %s", account_url, self.context.connection_id)
        return account_url

    def query(self, session: Session) -> messages.Registration | None:
        """The account as the server knows it (a lookup by key that creates nothing), or None.

        ``session`` must be one opened with ``register=False``.
        """
        lookup = messages.NewRegistration(only_return_existing=True)

        def send() -> messages.Registration:
            response = session.net.post(
                session.directory["newAccount"], lookup, new_nonce_url=session.directory["newNonce"]
            )
            return cast(messages.Registration, messages.Registration.from_json(response.json()))

        try:
            return call("look up account", send)
        except CARejectedError as exc:
            if exc.data.get("acme_error") == "accountDoesNotExist":
                return None
            raise
