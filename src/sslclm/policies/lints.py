"""CA/Browser Forum TLS Baseline Requirements lints of a certificate, through ``pkilint``.

pkilint decodes the certificate with pyasn1 and runs several hundred validations; building the
validator tree costs hundreds of milliseconds, so one is built per certificate type and kept.
A lint then costs a few milliseconds per certificate: the ``cabf-lint`` check that uses this is
opt-in, for the policy sets (and scopes) that hold publicly trusted certificates.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

# pkilint's severities, mildest first (its own names, upper-case in its findings).
SEVERITIES = ("info", "notice", "warning", "error", "fatal")


@dataclass(frozen=True, slots=True)
class LintFinding:
    severity: str  # one of SEVERITIES
    code: str  # e.g. cabf.serverauth.subscriber.authority_info_access_extension_absent
    message: str | None


@cache
def _validator(certificate_type: Any) -> Any:
    from pkilint.cabf import serverauth
    from pkilint.pkix import certificate

    return certificate.create_pkix_certificate_validator_container(
        serverauth.create_decoding_validators(), serverauth.create_validators(certificate_type)
    )


@cache
def _loader() -> Any:
    from pkilint import loader

    return loader.RFC5280CertificateDocumentLoader()


def lint_serverauth(der: bytes, min_severity: str = "error") -> list[LintFinding]:
    """Findings at ``min_severity`` or worse for a TLS server certificate, with the certificate
    type pkilint detects (DV, OV, EV, IV, CA kinds). A certificate pkilint cannot decode or
    classify gives one ``fatal`` finding that says so."""
    from pkilint import finding_filter
    from pkilint.cabf import serverauth
    from pyasn1.error import PyAsn1Error

    floor = SEVERITIES.index(min_severity)
    try:
        document = _loader().load_der_document(der, "certificate")
        certificate_type = serverauth.determine_certificate_type(document)
        results = _validator(certificate_type).validate(document.root)
    except (ValueError, TypeError, PyAsn1Error) as exc:
        return [LintFinding("fatal", "sslclm.lint.undecodable", str(exc)[:200])]
    results, _ = finding_filter.filter_results(
        serverauth.create_serverauth_finding_filters(certificate_type), results
    )
    findings = []
    for result in results:
        for description in result.finding_descriptions:
            severity = str(description.finding.severity).lower()
            if severity in SEVERITIES and SEVERITIES.index(severity) >= floor:
                findings.append(LintFinding(severity, description.finding.code, description.message))
    return findings
