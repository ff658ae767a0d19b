"""evloop's benchmark suite: run it with ``python benchmarks/run.py``."""

__all__: list = []
