"""What the control plane said, as the data path reads it (istio/ztunnel's `src/state/`).

`proxy_state` indexes one config version and makes the outbound routing decision over it,
`current` holds the version in force, `rbac` decides L4 authorization. Pure but for `current`'s
wait; imports nothing of ztunnel's but `config`.
"""
