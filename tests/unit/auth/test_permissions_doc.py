"""docs/permissions.md tells the truth: its matrix is MATRIX, its route table is the app's routes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant

from sslclm.api.app import create_app
from sslclm.api.deps import get_principal
from sslclm.auth.permissions import MATRIX, Permission, Role
from sslclm.core.config import Settings
from sslclm.web.routes import web_principal

try:  # FastAPI >= 0.130 keeps included routers as branches; this walks them to the final routes.
    from fastapi.routing import iter_route_contexts
except ImportError:  # pragma: no cover - older FastAPI flattens routes into app.routes itself
    iter_route_contexts = None

DOC = Path(__file__).resolve().parents[3] / "docs" / "permissions.md"
ROLES = ["admin", "operator", "auditor", "viewer"]


def _section(title: str) -> list[list[str]]:
    text = DOC.read_text()
    body = text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in body.splitlines():
        if line.startswith("|") and not line.startswith("| ---"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows[1:]  # without the header row


def test_matrix_matches_the_code() -> None:
    rows = _section("The matrix")
    documented = {
        row[0].strip("`"): dict(zip(ROLES, (cell == "✓" for cell in row[2:]), strict=True)) for row in rows
    }
    assert set(documented) == {permission.value for permission in Permission}
    for permission in Permission:
        for role in ROLES:
            granted = permission in MATRIX[Role(role)]
            assert documented[permission.value][role] == granted, f"{role} with {permission.value}"


def _needs(dependant: Dependant) -> set[str]:
    found: set[str] = set()
    required = getattr(dependant.call, "required_permission", None)
    if required is not None:
        found.add(f"`{required.value}`")
    if dependant.call in (get_principal, web_principal):
        found.add("authenticated")
    for child in dependant.dependencies:
        found |= _needs(child)
    return found


def _routes(app: FastAPI) -> Iterator[Any]:
    if iter_route_contexts is None:
        yield from app.routes
    else:
        yield from iter_route_contexts(app.routes)


def routes_of_the_app() -> dict[tuple[str, str], str]:
    table: dict[tuple[str, str], str] = {}
    for route in _routes(create_app(Settings())):
        dependant = getattr(route, "dependant", None)
        needs = _needs(dependant) if dependant is not None else set()
        permissions = sorted(need for need in needs if need.startswith("`"))
        need = ", ".join(permissions) or ("authenticated" if needs else "public")
        for method in sorted(set(getattr(route, "methods", None) or {"GET"}) - {"HEAD"}):
            table[(method, route.path)] = need
    return table


def test_route_table_matches_the_app() -> None:
    documented = {(row[0], row[1]): row[2] for row in _section("Routes")}
    actual = routes_of_the_app()
    missing = [
        f"| {m} | {p} | {need} | |" for (m, p), need in sorted(actual.items()) if (m, p) not in documented
    ]
    assert not missing, "add these rows to docs/permissions.md:\n" + "\n".join(missing)
    stale = sorted(set(documented) - set(actual))
    assert not stale, f"docs/permissions.md lists routes the app does not have: {stale}"
    wrong = {key: (documented[key], need) for key, need in actual.items() if documented[key] != need}
    assert not wrong, f"documented vs actual permission: {wrong}"
