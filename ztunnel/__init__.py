"""wisp's ztunnel: the per-node L4 proxy of the ambient mesh.

The folders follow a packet, as istio/ztunnel's `src/` does: `inpod/` (pods handed over by the
node agent over ZDS, and worker processes) → `proxy/` (one pod's listeners → `outbound` (15001)
/ `inbound` (15008, HBONE) / `inbound_passthrough` (15006) → `splice`); decisions come from
`state/` (config, routing, rbac). At the top: `config` (what the process is told), `identity`
(certificates), `metrics` and `admin` (reporting), `app` (the process, which wires them) and
`main` (its command line). docs/architecture.md, "ztunnel's layout", says who may import whom.
"""
