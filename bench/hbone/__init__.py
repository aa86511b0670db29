"""HBONE throughput and request rate on loopback, next to plain TCP and plain TLS anchors.

Run `python -m bench.hbone` (add `--quick` for a < 60 s pass). A server process and a client
process, one core each; contenders alternate round by round and the table shows medians. HBONE
runs on ztunnel's data path (wisp.engine): the client app's TCP connection is spliced onto a pooled
CONNECT stream, and the server splices the stream to a TCP connection to its app.
"""
