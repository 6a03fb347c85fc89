"""The agent stays light: importing it loads neither the database nor the web stack."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import sys
import sslclm.agent.runner, sslclm.agent.jobs, sslclm.agent.client, sslclm.agent.config, sslclm.protocol
heavy = [name for name in ("sqlalchemy", "fastapi", "starlette", "alembic") if name in sys.modules]
ours = sorted(
    name for name in sys.modules
    if name.startswith("sslclm.") and not name.startswith(
        ("sslclm.agent", "sslclm.spi", "sslclm.pki", "sslclm.protocol", "sslclm.errors", "sslclm.connectors")
    )
)
print(heavy, ours)
"""


def test_the_agent_imports_neither_sqlalchemy_nor_fastapi() -> None:
    done = subprocess.run(
        [sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[] []", done.stdout
