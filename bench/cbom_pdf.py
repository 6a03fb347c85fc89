"""CBOM and PDF summary over a synthetic inventory: time, document size and memory per page.

Imports the cached corpus (``bench.corpus``) into a fresh SQLite database, then measures

- one CBOM page (``--page`` certificates) built without and with schema validation, its JSON size,
  and the peak Python heap while building it (tracemalloc, in a separate pass: tracing slows it);
- the whole inventory exported page by page (what ``report cbom --after-id`` does), with the peak
  resident set size of the process;
- the PDF summary: collecting the figures and drawing the PDF.

    python -m bench.cbom_pdf --count 100000 --files 4 --page 1000   # 20,000 certificates
"""

from __future__ import annotations

import argparse
import base64
import secrets
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil

from bench._util import fmt_int, format_table, load_average, machine_info
from bench.corpus import ensure_corpus
from sslclm.audit.service import AuditContext
from sslclm.core.config import Settings
from sslclm.core.platform import Platform
from sslclm.inventory.importer import import_paths
from sslclm.reporting import cbom, pdf


def _rss_mb() -> float:
    return float(psutil.Process().memory_info().rss) / 2**20


def measure(platform: Platform, page: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    now = platform.clock()
    with platform.sessions() as session:
        started, cpu = time.perf_counter(), time.process_time()
        built = cbom.build_cbom(session, now=now, limit=page, validate=False)
        results["page_build_s"] = time.perf_counter() - started
        results["page_build_cpu_s"] = time.process_time() - cpu
        results["page_bytes"] = len(built.text)
        results["page_certificates"] = built.certificates
        started, cpu = time.perf_counter(), time.process_time()
        cbom.build_cbom(session, now=now, limit=page, validate=True)
        results["page_build_validated_s"] = time.perf_counter() - started
        results["page_build_validated_cpu_s"] = time.process_time() - cpu

        tracemalloc.start()
        cbom.build_cbom(session, now=now, limit=page, validate=False)
        results["page_peak_heap_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()

        rss_before = _rss_mb()
        peak_rss = rss_before
        started, cpu = time.perf_counter(), time.process_time()
        after, pages, certificates = 0, 0, 0
        while True:
            part = cbom.build_cbom(session, now=now, after_id=after, limit=page, validate=True)
            pages, certificates = pages + 1, certificates + part.certificates
            peak_rss = max(peak_rss, _rss_mb())
            if part.next_after_id is None:
                break
            after = part.next_after_id
        results["all_pages_s"] = time.perf_counter() - started
        results["all_pages_cpu_s"] = time.process_time() - cpu
        results["all_pages"] = pages
        results["all_certificates"] = certificates
        results["rss_growth_mb"] = peak_rss - rss_before

        started = time.perf_counter()
        figures = pdf.collect_summary(session, now=now, expiring_days=platform.settings.expiring_days)
        results["summary_collect_s"] = time.perf_counter() - started
        started = time.perf_counter()
        document = pdf.render_pdf(figures)
        results["pdf_render_s"] = time.perf_counter() - started
        results["pdf_bytes"] = len(document)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--page", type=int, default=cbom.DEFAULT_CERTIFICATES)
    parser.add_argument(
        "--files", type=int, default=0, help="Import only the first K corpus files (5,000 each)."
    )
    args = parser.parse_args(argv)
    corpus = ensure_corpus(args.count)
    with tempfile.TemporaryDirectory(prefix="sslclm-bench-cbom-") as home:
        settings = Settings(
            home=Path(home),
            database_url=f"sqlite:///{home}/bench.db",
            master_key=base64.b64encode(secrets.token_bytes(32)).decode(),
        )
        platform = Platform.open(settings)
        try:
            started = time.perf_counter()
            files = corpus.files[: args.files] if args.files else [corpus.directory]
            imported = import_paths(platform, files, AuditContext(actor="bench")).imported
            imported_s = time.perf_counter() - started
            results = measure(platform, args.page)
        finally:
            platform.close()
    print(machine_info())
    print(f"imported {fmt_int(imported)} certificates in {imported_s:.1f} s; load average {load_average()}")
    rows = [
        [
            "CBOM page build (no validation)",
            f"{results['page_build_s']:.2f} s",
            f"{results['page_certificates']} certs, {results['page_build_cpu_s']:.2f} CPU s",
        ],
        [
            "CBOM page build + JSON schema validation",
            f"{results['page_build_validated_s']:.2f} s",
            f"{results['page_build_validated_cpu_s']:.2f} CPU s",
        ],
        ["CBOM page JSON size", f"{results['page_bytes'] / 2**20:.1f} MiB", ""],
        ["CBOM page peak Python heap", f"{results['page_peak_heap_mb']:.0f} MiB", "tracemalloc"],
        [
            "CBOM whole inventory, page by page, validated",
            f"{results['all_pages_s']:.1f} s",
            f"{results['all_pages']} pages, {fmt_int(results['all_certificates'])} certs, "
            f"{results['all_pages_cpu_s']:.1f} CPU s",
        ],
        ["RSS growth over the whole export", f"{results['rss_growth_mb']:.0f} MiB", ""],
        ["PDF summary: collect figures", f"{results['summary_collect_s'] * 1000:.0f} ms", ""],
        ["PDF summary: draw", f"{results['pdf_render_s'] * 1000:.0f} ms", f"{results['pdf_bytes']} bytes"],
    ]
    print(format_table(["measure", "value", "note"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
