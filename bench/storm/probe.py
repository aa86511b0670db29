"""What a proxy holds, process by process, and how fast a pod opens connections: read from /proc.

A ztunnel is a main process and its workers (`--workers N`), HAProxy one process: every reading
here is per process (pid, role, RSS now and at peak, open file descriptors), so a leak in one
worker is not hidden by a sum. `Sampler` reads them on a thread while a phase runs and keeps each
process's peak, and reads the client pod's TCP counters (/proc/<pid>/net/snmp of a process in its
network namespace: `ActiveOpens` counts every connect the pod started) to give the connection
rate the pod really achieved, second by second.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.mesh import procstat

SAMPLE_INTERVAL = 0.5
HBONE_PORT = 15008


@dataclass(slots=True, frozen=True)
class ProcessReading:
    """One process of a proxy at one moment: KiB resident now and at its peak, descriptors open."""

    pid: int
    role: str
    rss_kib: int
    hwm_kib: int
    fds: int
    # Of `fds`, the TCP sockets to or from the HBONE port: pooled tunnels, which stay open until
    # idle for the pool's timeout (300 s), so they are not a leak when a phase ends.
    hbone: int = 0


def role_of(cmdline: list[str], root: bool) -> str:
    """`main` for the proxy's root process, `worker N` for a ztunnel worker (`--worker-index N`),
    else the program's name."""
    if root:
        return "main"
    if "--worker-index" in cmdline:
        at = cmdline.index("--worker-index")
        if at + 1 < len(cmdline):
            return f"worker {cmdline[at + 1]}"
    return Path(cmdline[0]).name if cmdline else "?"


def count_fds(pid: int, proc: Path = Path("/proc")) -> int:
    return len(os.listdir(proc / str(pid) / "fd"))


def socket_inodes(pid: int, proc: Path = Path("/proc")) -> set[int]:
    """Inodes of the sockets among a process's descriptors (links `socket:[inode]`)."""
    out = set()
    fd_dir = proc / str(pid) / "fd"
    for name in os.listdir(fd_dir):
        try:
            target = os.readlink(fd_dir / name)
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(int(target[8:-1]))
    return out


def parse_tcp_table(text: str) -> dict[int, tuple[int, int]]:
    """{inode: (local port, remote port)} from the text of /proc/net/tcp or tcp6."""
    out = {}
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10:
            continue
        local, remote, inode = fields[1], fields[2], int(fields[9])
        if inode:
            out[inode] = (int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16))
    return out


def tcp_ports(netns_pids: list[int], proc: Path = Path("/proc")) -> dict[int, tuple[int, int]]:
    """{inode: ports} of every TCP socket in the network namespaces the given processes live in
    (a proxy's sockets may live in its node's namespace or in any pod's)."""
    out: dict[int, tuple[int, int]] = {}
    for pid in netns_pids:
        for table in ("tcp", "tcp6"):
            try:
                out.update(parse_tcp_table((proc / str(pid) / "net" / table).read_text()))
            except OSError:
                continue
    return out


def read_process(pid: int, role: str, proc: Path = Path("/proc"),
                 ports: dict[int, tuple[int, int]] | None = None) -> ProcessReading:
    rss, hwm = procstat.parse_status((proc / str(pid) / "status").read_text())
    hbone = 0
    if ports is not None:
        hbone = sum(1 for inode in socket_inodes(pid, proc) if HBONE_PORT in ports.get(inode, ()))
    return ProcessReading(pid, role, rss, hwm, count_fds(pid, proc), hbone)


def read_tree(root: int, proc: Path = Path("/proc"), netns_pids: list[int] = ()) -> list[ProcessReading]:
    """Every process of the tree under `root` (root first); ones that exit meanwhile are left out.
    With `netns_pids` (a process in each namespace whose TCP table counts), each reading also
    says how many of its descriptors are HBONE sockets."""
    parents, _ = procstat.processes(proc)
    if root not in parents:
        raise ProcessLookupError(f"process {root} is not running")
    ports = tcp_ports([root, *netns_pids], proc) if netns_pids else None
    out = []
    for pid in sorted(procstat.descendants(root, parents), key=lambda p: (p != root, p)):
        try:
            cmdline = (proc / str(pid) / "cmdline").read_bytes().split(b"\0")
            role = role_of([a.decode(errors="replace") for a in cmdline if a], pid == root)
            out.append(read_process(pid, role, proc, ports))
        except (OSError, ValueError):
            continue
    return out


def parse_snmp(text: str) -> dict[str, int]:
    """The `Tcp:` counters of /proc/net/snmp (a header line of names, then a line of values)."""
    rows = [line.split() for line in text.splitlines() if line.startswith("Tcp:")]
    if len(rows) < 2 or len(rows[0]) != len(rows[1]):
        raise ValueError("no Tcp: header and value lines in the snmp text")
    return {name: int(value) for name, value in zip(rows[0][1:], rows[1][1:])}


def tcp_counters(pid: int) -> dict[str, int]:
    """TCP counters of the network namespace `pid` lives in."""
    return parse_snmp(Path(f"/proc/{pid}/net/snmp").read_text())


def time_wait(netns: str) -> int:
    """TCP sockets in TIME_WAIT in `netns`: each holds its local port for 60 s, so they bound how
    fast one address can open new connections to one destination."""
    out = subprocess.run(["ip", "netns", "exec", netns, "ss", "-Htan", "state", "time-wait"],
                         capture_output=True, text=True).stdout
    return sum(1 for line in out.splitlines() if line.strip())


@dataclass(slots=True)
class Series:
    """What a Sampler saw: each process's peak reading, and the pod's connects per interval."""

    peak_rss_kib: dict[int, int] = field(default_factory=dict)
    peak_fds: dict[int, int] = field(default_factory=dict)
    roles: dict[int, str] = field(default_factory=dict)
    # (monotonic time, ActiveOpens) of the client pod's namespace.
    opens: list[tuple[float, int]] = field(default_factory=list)


class Sampler:
    """Reads the proxies' processes and the client pod's connects every SAMPLE_INTERVAL on a thread.

    `roots` are {name: root pid} of each proxy tree; `client_pid` is any process in the client
    pod's network namespace (its counters are the namespace's).
    """

    def __init__(self, roots: dict[str, int], client_pid: int | None = None,
                 interval: float = SAMPLE_INTERVAL) -> None:
        self.roots = roots
        self.client_pid = client_pid
        self.interval = interval
        self.series = {name: Series() for name in roots}
        self.opens: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        if self.client_pid is not None:
            try:
                self.opens.append((time.monotonic(), tcp_counters(self.client_pid)["ActiveOpens"]))
            except (OSError, KeyError, ValueError):
                pass
        for name, root in self.roots.items():
            series = self.series[name]
            try:
                readings = read_tree(root)
            except ProcessLookupError:
                continue
            for r in readings:
                series.roles[r.pid] = r.role
                series.peak_rss_kib[r.pid] = max(series.peak_rss_kib.get(r.pid, 0), r.rss_kib)
                series.peak_fds[r.pid] = max(series.peak_fds.get(r.pid, 0), r.fds)
