"""Benchmarks of the edge agent: ``python -m bench.run`` and ``python -m bench.soak``.

Every figure is a ratio or a pair taken side by side in one run (this machine is noisy);
medians over repeated rounds. Nothing here asserts on time.
"""
