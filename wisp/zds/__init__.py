"""ZDS, the node agent → ztunnel hand-over of pod network namespaces, once for every component.

`protocol` is the sans-IO part (messages, encoding, per-message rules), `transport` the datagram
I/O both sides share, `node` the node agent's side (the server: snapshot, Add/Del, acks, retries;
also what ztunnel's main process speaks to its worker processes), `workload` ztunnel's side (the
client: Hello, a session per connection, acting on pods and acking).
"""
