"""The data path, in the packet's order (istio/ztunnel's `src/proxy/`).

`pod` runs one pod's listeners (`listeners`, made in the pod's netns) and hands each accepted
connection to `outbound` (15001), `inbound_passthrough` (15006) or, through the HBONE server,
`inbound` (15008); they `splice` bytes and register live connections with `connections`. Every
handler gets `inputs.ProxyInputs` (state, certificates, metrics, tracker) and the pod's
`PodContext`, never the application.
"""
