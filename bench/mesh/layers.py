"""perf on every proxy of a contender during one extra run: its CPU per request by layer.

py-spy sees Python frames, and a thread it stops inside a system call counts as being in that
call however long the kernel then takes; it put 82% of a ztunnel's working samples in system
calls at saturation. `perf record -g` samples the CPU itself, kernel included, so a native
proxy (HAProxy) and a Python one (ztunnel) are measured the same way and their layers compare:
the kernel's network stack (and within it the netfilter hooks the in-pod redirection adds),
the scheduler, OpenSSL, the C library, and the proxy's own code (the CPython interpreter for
ztunnel, the haproxy binary for HAProxy).

Each sample is put in one layer by its innermost frame: user-space frames by their library,
kernel frames by the first frame (innermost first) that names a known area. Figures are µs of
CPU per unit of work per proxy: samples ÷ frequency ÷ units ÷ proxies, the unit being a request
(fixed, saturation, connect) or a MiB moved (bulk).
"""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from . import profile

FREQUENCY = 999

# User-space libraries by the file a frame's code lives in.
_USER = (
    ("libcrypto", "OpenSSL"), ("libssl", "OpenSSL"),
    ("libpython", "proxy code (CPython)"), ("cpython-3", "proxy code (CPython)"),
    ("/haproxy", "proxy code (haproxy)"),
    ("libc.so", "C library"), ("libc-", "C library"),
)
# Kernel areas by function name, most specific first; searched from the innermost frame out.
_KERNEL = (
    ("nf_conntrack", "kernel: netfilter"), ("ipt_do_table", "kernel: netfilter"),
    ("nft_do_chain", "kernel: netfilter"), ("nf_hook_slow", "kernel: netfilter"),
    ("nf_nat", "kernel: netfilter"),
    ("schedule", "kernel: scheduler"), ("try_to_wake_up", "kernel: scheduler"),
    ("ep_poll", "kernel: epoll"), ("ep_send_events", "kernel: epoll"),
    ("page_fault", "kernel: memory"), ("do_anonymous_page", "kernel: memory"),
    ("tcp_", "kernel: TCP/IP"), ("ip_", "kernel: TCP/IP"), ("__dev_queue_xmit", "kernel: TCP/IP"),
    ("veth_", "kernel: TCP/IP"), ("net_rx", "kernel: TCP/IP"), ("__netif", "kernel: TCP/IP"),
    ("skb", "kernel: TCP/IP"), ("sock_", "kernel: TCP/IP"), ("inet_", "kernel: TCP/IP"),
    ("copy_", "kernel: system calls"), ("do_syscall_64", "kernel: system calls"), ("fdget", "kernel: system calls"),
    ("fput", "kernel: system calls"), ("__sys_", "kernel: system calls"), ("__x64_sys", "kernel: system calls"),
    ("vfs_", "kernel: system calls"), ("entry_SYSCALL", "kernel: system calls"),
)
LAYERS = ("proxy code (CPython)", "proxy code (haproxy)", "OpenSSL", "C library", "other user code",
          "kernel: TCP/IP", "kernel: netfilter", "kernel: epoll", "kernel: scheduler", "kernel: memory",
          "kernel: system calls", "kernel: other")
_FRAME = re.compile(r"^\s*[0-9a-f]+ (.*) \((.*)\)$")


class LayerError(RuntimeError):
    """perf failed or wrote something we cannot read; the message has its output."""


@dataclass(slots=True, frozen=True)
class Frame:
    symbol: str
    where: str  # the library or "[kernel.kallsyms]"

    @property
    def kernel(self) -> bool:
        return self.where.startswith("[kernel")


def layer(stack: list[Frame]) -> str:
    """The layer of one sample; `stack` is innermost first, as perf script prints it."""
    if not stack:
        return "kernel: other"
    leaf = stack[0]
    if not leaf.kernel:
        for needle, name in _USER:
            if needle in leaf.where:
                return name
        return "other user code"
    for frame in stack:
        if not frame.kernel:
            break
        for needle, name in _KERNEL:
            if needle in frame.symbol:
                return name
    return "kernel: other"


def parse_script(text: str) -> Counter[str]:
    """{layer: samples} from `perf script -F pid,ip,sym,dso` output (a header line per sample,
    then its frames, then a blank line)."""
    layers: Counter[str] = Counter()
    stack: list[Frame] | None = None
    for line in text.splitlines() + [""]:
        if not line.strip():
            if stack is not None:
                layers[layer(stack)] += 1
            stack = None
            continue
        if stack is None:
            stack = []  # the sample's header (its pid)
            continue
        found = _FRAME.match(line)
        if found:
            stack.append(Frame(found.group(1), found.group(2)))
    return layers


class Recording(profile.Recording):
    """`with Recording(pids, seconds, output)`: perf records those processes (and threads they
    start) with call graphs while the block runs."""

    def __init__(self, pids: list[int], seconds: float, output: Path) -> None:
        self.argv = ["perf", "record", "-q", "-g", "-F", str(FREQUENCY), "-p", ",".join(map(str, pids)),
                     "-o", str(output), "--", "sleep", str(max(1, int(seconds)))]
        self.output = output
        self.seconds = seconds
        self._process = None

    def layers(self) -> Counter[str]:
        if self.returncode != 0 or not self.output.exists():
            raise LayerError(f"perf record exited with {self.returncode}: {self.log.strip()[-800:]}")
        script = subprocess.run(["perf", "script", "-i", str(self.output), "-F", "pid,ip,sym,dso"],
                                capture_output=True, text=True, timeout=300)
        if script.returncode != 0:
            raise LayerError(f"perf script exited with {script.returncode}: {script.stderr.strip()[-800:]}")
        return parse_script(script.stdout)


def per_unit(layers: Counter[str], units: float, proxies: int, frequency: int = FREQUENCY) -> dict[str, float]:
    """µs of CPU per unit of work (a request, a MiB) per proxy in each layer (and "total")."""
    if units <= 0 or proxies <= 0:
        raise ValueError("per-unit figures need work done and proxies")
    scale = 1e6 / frequency / units / proxies
    out = {name: layers.get(name, 0) * scale for name in LAYERS if layers.get(name)}
    out["total"] = sum(layers.values()) * scale
    return out
