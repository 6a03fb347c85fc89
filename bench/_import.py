"""One import of a corpus through the platform's own code path, in a process of its own.

Run by ``bench.inventory`` as
``python -m bench._import HOME DATABASE_URL CORPUS_DIR [--skip-evaluation]`` with
``SSLCLM_MASTER_KEY`` in the environment, so that its peak memory (and its parser processes')
is the import's alone. The policy evaluation jobs the import enqueued run afterwards in the
same process and are timed apart (unless left out), as is the search indexing job
(``inventory.index-search``) that comes before them. On PostgreSQL the server's processes' CPU
time is read too (same machine). Prints one JSON line.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

import psutil
from pydantic import SecretStr
from sqlalchemy import func, select

from sslclm.audit.service import AuditContext
from sslclm.core.config import Settings
from sslclm.core.platform import Platform
from sslclm.inventory.importer import import_paths, run_evaluations, run_indexing
from sslclm.jobs.models import Job
from sslclm.policies.models import PolicyViolation
from sslclm.policies.tasks import EVALUATE_WRITTEN_TASK


def _descendants_cpu() -> float:
    """CPU seconds of this process's descendants, the ones that ended included.

    The parsers are started by the forkserver, which reaps them: their time is in its children's
    times, not in this process's ``os.times()``.
    """
    total = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            times = child.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total


def _server_cpu(database_url: str) -> float:
    """CPU seconds of the local PostgreSQL server's processes (0 for SQLite).

    A backend that exits between two readings takes its time with it, except into the children
    times of the postmaster that reaps it: those are counted too.
    """
    if not database_url.startswith("postgresql"):
        return 0.0
    total = 0.0
    for process in psutil.process_iter(["name", "cpu_times"]):
        times = process.info["cpu_times"]
        if (process.info["name"] or "").startswith("postgres") and times:
            total += times.user + times.system + times.children_user + times.children_system
    return total


def main(argv: list[str]) -> int:
    home, database_url, corpus = Path(argv[0]), argv[1], Path(argv[2])
    evaluate = "--skip-evaluation" not in argv[3:]
    settings = Settings(
        home=home, database_url=database_url, master_key=SecretStr(os.environ["SSLCLM_MASTER_KEY"])
    )
    opened = time.perf_counter()
    platform = Platform.open(settings)
    open_seconds = time.perf_counter() - opened
    cpu_before = os.times()
    descendants_before = _descendants_cpu()
    server_before = _server_cpu(database_url)
    started = time.perf_counter()
    # The policy evaluation of the new certificates runs as jobs after the import (as a worker
    # would run them): timed on its own below, not hidden from the figures.
    summary = import_paths(platform, [corpus], AuditContext(actor="bench"), evaluate=False)
    seconds = time.perf_counter() - started
    cpu_after = os.times()
    descendants_after = _descendants_cpu()
    server_after = _server_cpu(database_url)
    import_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    indexing_started = time.perf_counter()
    run_indexing(platform)
    indexing_seconds = time.perf_counter() - indexing_started
    cpu_indexed = os.times()
    server_indexed = _server_cpu(database_url)
    evaluation_started = time.perf_counter()
    if evaluate:
        run_evaluations(platform)
    evaluation_seconds = time.perf_counter() - evaluation_started
    cpu_evaluated = os.times()
    with platform.sessions() as session:
        statuses = dict(
            session.execute(
                select(Job.status, func.count()).where(Job.kind == EVALUATE_WRITTEN_TASK).group_by(Job.status)
            ).all()
        )
        violations = session.execute(select(func.count()).select_from(PolicyViolation)).scalar_one()
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
        + (cpu_after.children_system - cpu_before.children_system)
        + (descendants_after - descendants_before),
        # ru_maxrss is in KiB on Linux; RUSAGE_CHILDREN is the largest single child, not a sum.
        "maxrss_self_mb": round(self_usage.ru_maxrss * 1024 / 1e6, 1),
        "maxrss_self_import_mb": round(import_maxrss * 1024 / 1e6, 1),
        "maxrss_children_mb": round(children.ru_maxrss * 1024 / 1e6, 1),
        "cpu_seconds_server": server_after - server_before,
        "indexing": {
            "seconds": indexing_seconds,
            "cpu_seconds": (cpu_indexed.user - cpu_after.user) + (cpu_indexed.system - cpu_after.system),
            "cpu_seconds_server": server_indexed - server_after,
        },
        "evaluation": {
            "seconds": evaluation_seconds,
            "cpu_seconds": (cpu_evaluated.user - cpu_indexed.user)
            + (cpu_evaluated.system - cpu_indexed.system),
            "jobs": statuses,
            "violations": violations,
            "skipped": not evaluate,
        },
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
