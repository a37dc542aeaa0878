"""Benchmarks and the GPU check. Each script's docstring names its command and the file its
results go to; most run from the repository root as modules, e.g.
``.venv/bin/python -m benchmarks.bench_optimizer_core``, so that this checkout's
``adaact_dist`` (installed or not) and the other modules here import without path edits.
"""
