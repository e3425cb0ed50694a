"""Benchmark code the CLI runs: the quality protocol, the speed comparison with the per-label reference, FLOPs."""
