"""The ``step-ca`` CA gateway: Smallstep step-ca through a JWK provisioner's one-time tokens."""

from __future__ import annotations

from sslclm.connectors.step_ca.config import StepCaConfig
from sslclm.connectors.step_ca.gateway import StepCaGateway

__all__ = ["StepCaConfig", "StepCaGateway"]
