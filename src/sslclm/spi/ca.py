"""The CA gateway: how the platform gets certificates issued and revoked.

Errors every method may raise, and what they mean to the platform:

- :class:`~sslclm.errors.CARejectedError` — the CA refused this request for a reason that will not change
  by retrying (bad CSR, names it will not certify, unknown serial). The job fails with the message.
- :class:`~sslclm.errors.CAUnavailableError` — the CA could not be reached or answered with an error it
  may recover from (timeout, 5xx, rate limit). The job retries later with backoff.
- :class:`~sslclm.errors.ConnectorError` — anything else the remote side did wrong (e.g. a reply that is
  not what the protocol promises); its ``retryable`` flag says whether to retry.
- :class:`~sslclm.errors.InvalidInputError` — the request itself is malformed before reaching the CA.
- :class:`~sslclm.errors.NotSupportedError` — the method stands for a capability the gateway does not
  declare. The platform checks ``capabilities`` first, so this only surfaces for a direct call.

Any other exception is a bug in the connector; the platform records it and does not retry.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar

from sslclm.spi.base import Connector
from sslclm.spi.capabilities import Capability, ConnectorKind
from sslclm.spi.types import (
    ChainRequest,
    ChainResult,
    CollectRequest,
    IssueRequest,
    IssueResult,
    ListIssuedRequest,
    ListIssuedResult,
    RenewalInfoRequest,
    RenewalInfoResult,
    RevokeRequest,
    RevokeResult,
)

CHAIN = ChainRequest()


class CAGateway(Connector):
    """A certificate authority the platform can ask for certificates."""

    kind: ClassVar[ConnectorKind] = ConnectorKind.CA_GATEWAY

    def issue(self, request: IssueRequest) -> IssueResult:
        """Issue a certificate for ``request.csr_pem`` (capability ``ISSUE``).

        Returns the certificate and its chain, or — for a gateway declaring ``ASYNC_ISSUE`` — a pending
        result to :meth:`collect` later. Calling again with the same ``idempotency_key`` returns the
        same certificate or the same pending reference; it never issues a second certificate.
        A CSR that does not parse or whose signature does not verify raises ``CARejectedError``.
        """
        raise self._unsupported(Capability.ISSUE)

    def collect(self, request: CollectRequest) -> IssueResult:
        """Fetch a certificate whose issuance answered pending (capability ``ASYNC_ISSUE``).

        Returns pending again (with a new ``retry_after``) while the CA is still working. An unknown
        or expired ``pending_ref`` raises ``CARejectedError``; a request the CA finally refused raises
        ``CARejectedError`` with the CA's reason.
        """
        raise self._unsupported(Capability.ASYNC_ISSUE)

    def revoke(self, request: RevokeRequest) -> RevokeResult:
        """Revoke a certificate this CA issued (capability ``REVOKE``).

        Revoking an already revoked certificate succeeds with ``already_revoked=True``. A certificate
        this CA does not know raises ``CARejectedError``.
        """
        raise self._unsupported(Capability.REVOKE)

    def renewal_info(self, request: RenewalInfoRequest) -> RenewalInfoResult:
        """The CA's suggested renewal window for a certificate (capability ``ARI``, RFC 9773).

        A certificate the CA does not know raises ``CARejectedError``.
        """
        raise self._unsupported(Capability.ARI)

    def list_issued(self, request: ListIssuedRequest) -> ListIssuedResult:
        """One page of the certificates this CA issued, in an order stable across pages (capability ``LIST``).

        A cursor that is not one this gateway handed out raises ``InvalidInputError``.
        """
        raise self._unsupported(Capability.LIST)

    @abstractmethod
    def get_chain(self, request: ChainRequest = CHAIN) -> ChainResult:
        """The CA's own certificates, issuing CA first, and its trust anchor when it has one.

        Raises ``CAUnavailableError`` when the CA cannot be reached to fetch them.
        """
