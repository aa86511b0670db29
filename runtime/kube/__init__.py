"""The runtime as a Kubernetes node: kubelet, kube-proxy and the API server forwarder for `wisp up --kubernetes`."""
