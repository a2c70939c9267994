"""The top layer: the `pilot-commit` console script and the benchmarks.

It may import every other package (services, trainer); nothing imports it. The layers and
their rules are checked by tests/test_layers.py (`pilot_commit.imports` walks the code).
"""
