"""The benchmark suite: ``python -m bench`` runs every ``bench/bench_*.py`` in one process."""
