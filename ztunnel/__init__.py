"""wisp's ztunnel: the per-node L4 proxy of the ambient mesh.

The modules follow a packet: `inpod` (pods handed over by the node agent) → `proxy` (one pod's
listeners) → `outbound` (15001) / `inbound` (15008, HBONE) / `inbound_passthrough` (15006) →
`splice`; decisions come from `state` (config) and `rbac` (L4 policy); `identity` keeps
certificates; `metrics` and `admin` report.
"""
