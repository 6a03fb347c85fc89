"""One import of a corpus through the platform's own code path, in a process of its own.

Run by ``bench.inventory`` as ``python -m bench._import HOME DATABASE_URL CORPUS_DIR`` with
``SSLCLM_MASTER_KEY`` in the environment, so that its peak memory (and its parser processes')
is the import's alone. Prints one JSON line.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

from pydantic import SecretStr

from sslclm.audit.service import AuditContext
from sslclm.core.config import Settings
from sslclm.core.platform import Platform
from sslclm.inventory.importer import import_paths


def main(argv: list[str]) -> int:
    home, database_url, corpus = Path(argv[0]), argv[1], Path(argv[2])
    settings = Settings(
        home=home, database_url=database_url, master_key=SecretStr(os.environ["SSLCLM_MASTER_KEY"])
    )
    opened = time.perf_counter()
    platform = Platform.open(settings)
    open_seconds = time.perf_counter() - opened
    cpu_before = os.times()
    started = time.perf_counter()
    summary = import_paths(platform, [corpus], AuditContext(actor="bench"))
    seconds = time.perf_counter() - started
    cpu_after = os.times()
    platform.close()
    self_usage = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = {
        "seconds": seconds,
        "open_seconds": open_seconds,
        "files": summary.files,
        "imported": summary.imported,
        "updated": summary.updated,
        "rejected": len(summary.rejected),
        "first_rejections": [{"path": r.path, "reason": r.reason} for r in summary.rejected[:5]],
        "cpu_seconds_self": (cpu_after.user - cpu_before.user) + (cpu_after.system - cpu_before.system),
        "cpu_seconds_children": (cpu_after.children_user - cpu_before.children_user)
        + (cpu_after.children_system - cpu_before.children_system),
        # ru_maxrss is in KiB on Linux; RUSAGE_CHILDREN is the largest single child, not a sum.
        "maxrss_self_mb": round(self_usage.ru_maxrss * 1024 / 1e6, 1),
        "maxrss_children_mb": round(children.ru_maxrss * 1024 / 1e6, 1),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
