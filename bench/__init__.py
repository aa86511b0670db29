"""Benchmarks: each one measures wisp next to native anchors in the same run and prints ratios."""
