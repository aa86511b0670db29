"""In-pod mode: pods handed over by the node agent, and their proxies (istio/ztunnel's `src/inpod/`).

`manager` starts and stops one pod proxy per pod (ZDS itself is wisp.zds.workload's);
with worker processes, `supervisor` runs them, `fanout` gives every pod to this process and
every worker, and `worker` is a worker's end of its sockets to the main process.
"""
