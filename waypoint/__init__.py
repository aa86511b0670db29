"""The waypoint: a per-service L7 proxy (issue 11), one process per waypoint Gateway (`wisp-waypoint`).

A request's path through the package, in order: `inbound` (the HBONE CONNECT on 15008: client
identity, dialled VIP:port) → `detect` (HTTP/1.1, HTTP/2 prior knowledge, or TCP) → the protocol
shell (`http1/`, `http2/`; TCP: `passthrough`) → `pipeline` (normalise, `authz`, `route`, endpoint,
forwarding headers) → `upstream` (endpoint choice, HBONE to the endpoint with the waypoint's
identity) → `telemetry` (Istio's request metrics, reporter="waypoint", and the access log).
`config` compiles what the control plane sends once per version; `app` holds the process
together; `main` is its command line. docs/architecture.md, "Waypoint process and HTTP/1.1", has
the decisions; docs/waypoints.md the user's view.
"""
