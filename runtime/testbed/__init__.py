"""A real Kubernetes control plane on loopback for wisp's tests: upstream binaries, no containers.

`build` compiles kube-apiserver, kube-controller-manager, kube-scheduler, kubectl and etcd from the
Go module proxy into a cache outside the work tree; `cluster` runs them on 127.0.0.1 with a
throwaway PKI; `nodes` registers kwok-style nodes and plays the kubelet's part for their pods.
`python -m runtime.testbed build|up|env` is the command line (docs/testbed.md).
"""
