"""hst_fast benchmarks: ``pytest bench/ --benchmark-only`` (see ``bench/README.md``); ``python -m bench.report``."""
