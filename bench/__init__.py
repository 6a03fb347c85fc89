"""Benchmarks of SSL-CLM: each module is run with ``python -m bench.<name>``; see docs/benchmarks.md."""
