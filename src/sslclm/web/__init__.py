"""The web UI: server-rendered pages served by the API app."""

from __future__ import annotations

from fastapi import FastAPI


def install_web(app: FastAPI) -> None:
    """Mounts the UI routes and static assets on ``app``."""
