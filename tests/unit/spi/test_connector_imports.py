"""Connectors see only the public plugin surface: ``sslclm.spi``, ``sslclm.pki`` and ``sslclm.errors``
(and their own package), so any of them could move to a separate distribution unchanged."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import sslclm.connectors

CONNECTORS = Path(sslclm.connectors.__file__).parent
ALLOWED = ("sslclm.spi", "sslclm.pki", "sslclm.errors")


def _module_name(path: Path) -> str:
    relative = path.relative_to(CONNECTORS.parent.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imported_modules(source: str, module: str, *, is_package: bool) -> list[tuple[int, str]]:
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # "from sslclm import x" imports sslclm.x as far as the boundary is concerned.
            if target == "sslclm":
                found.extend((node.lineno, f"sslclm.{alias.name}") for alias in node.names)
            else:
                found.append((node.lineno, target))
    return found


def _violations(source: str, module: str, *, is_package: bool = False) -> list[str]:
    parts = module.split(".")
    own = ".".join(parts[:3]) if len(parts) >= 3 else module  # sslclm.connectors.<name>
    bad = []
    for line, target in _imported_modules(source, module, is_package=is_package):
        if target != "sslclm" and not target.startswith("sslclm."):
            continue
        allowed = (*ALLOWED, own) if module != "sslclm.connectors" else ALLOWED
        if not any(target == prefix or target.startswith(prefix + ".") for prefix in allowed):
            bad.append(f"{module}:{line} imports {target}")
    return bad


def test_connectors_import_only_the_plugin_surface() -> None:
    files = sorted(CONNECTORS.rglob("*.py"))
    assert any(path.parent.name == "local_ca" for path in files), "the local CA connector is missing"
    violations: list[str] = []
    for path in files:
        violations += _violations(path.read_text(), _module_name(path), is_package=path.name == "__init__.py")
    assert violations == []


@pytest.mark.parametrize(
    ("source", "module", "expected"),
    [
        ("from sslclm.core.db import Base", "sslclm.connectors.acme.client", ["imports sslclm.core.db"]),
        ("import sslclm.inventory.service", "sslclm.connectors.x", ["imports sslclm.inventory.service"]),
        ("from sslclm import audit", "sslclm.connectors.x.y", ["imports sslclm.audit"]),
        ("from ...core import keys", "sslclm.connectors.x.y", ["imports sslclm.core"]),
        ("from ..acme import client", "sslclm.connectors.x.y", ["imports sslclm.connectors.acme"]),
        ("def f():\n    from sslclm.api import app", "sslclm.connectors.x", ["imports sslclm.api"]),
        ("from .config import C", "sslclm.connectors.x.gateway", []),
        ("from sslclm.spi import CAGateway\nfrom sslclm.pki import sign_csr", "sslclm.connectors.x", []),
        ("from sslclm.errors import CARejectedError\nimport cryptography.x509", "sslclm.connectors.x", []),
    ],
)
def test_the_checker_catches_forbidden_imports(source: str, module: str, expected: list[str]) -> None:
    found = _violations(source, module)
    assert [v.split(" ", 1)[1] for v in found] == expected
