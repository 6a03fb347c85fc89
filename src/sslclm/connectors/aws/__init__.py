"""AWS certificate stores: ``aws-acm`` (Certificate Manager) and ``aws-secrets-manager``, over boto3."""

from __future__ import annotations

from sslclm.connectors.aws.acm import AcmConfig, AcmStore
from sslclm.connectors.aws.secrets_manager import SecretsManagerConfig, SecretsManagerStore

__all__ = ["AcmConfig", "AcmStore", "SecretsManagerConfig", "SecretsManagerStore"]
