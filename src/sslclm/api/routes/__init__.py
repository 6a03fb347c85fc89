"""Every API router, in the order they appear in the OpenAPI document."""

from __future__ import annotations

from fastapi import APIRouter

from sslclm.api.routes import health

ROUTERS: list[APIRouter] = [health.router]
