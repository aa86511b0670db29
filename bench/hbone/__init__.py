"""HBONE throughput and request rate on loopback, next to plain TCP and plain TLS anchors.

Run `python -m bench.hbone` (add `--quick` for a < 60 s pass). A server process and a client
process, one core each; contenders alternate round by round and the table shows medians.
"""
