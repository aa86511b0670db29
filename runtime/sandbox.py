"""A pod's sandbox: its own user, the capabilities it asked for, a private view of the files.

Pods are the users' workloads. On a cluster the container runtime gives each one a user, a set
of capabilities and a filesystem without the node's secrets; this runtime has no images, so a
pod runs the machine's own programs, but confined as a container would be:

- its own uid and gid (`POD_UID_BASE` + a hash of mesh, namespace and name; no supplementary
  groups), so it can neither signal, trace nor read another pod, a waypoint or a mesh process;
  or the uid a pod's `securityContext` asks for, root included;
- the capabilities named in `capabilities` and no other (default: none): the bounding set is cut
  down to them, and they are kept in the permitted, effective, inheritable and ambient sets, so a
  non-root uid still has them after exec and root has only them; no_new_privs is set, so no
  setuid binary or file capability gives any more. `privileged` keeps every capability the
  runtime itself holds (its bounding set; in a container that may be fewer than the kernel
  has) and leaves no_new_privs unset (a privileged container);
- a private mount namespace in which `/run` (the mesh's run directory with every socket, key and
  token; `/run/netns`), `/dev/shm` (key files and ztunnel workers' sockets while in use) and the
  run directory itself when it is elsewhere are empty tmpfs; a directory the pod must traverse
  but may not (a Python installation under `/root`) is covered the same way, with only what the
  pod needs bound back read-only (`expose`);
- `binds`: `(machine path, path in the pod, read_only)`, a volume or a hostPath, bound
  recursively (a bind of `/run/netns` carries the namespaces bound there, so it stays reachable
  although `/run` is hidden); read-only binds are remounted read-only;
- files projected into that view (a waypoint's token and the root certificate) owned by the pod,
  mode 0400, as kubelet projects a service-account token;
- working directory `/` (or the container's `workingDir`, created in the pod's view if missing),
  not the runtime's, which may be a directory the pod must not see.

Nothing is ever created on the machine's filesystem for a pod. A mountpoint inside a read-write
directory bind (a volume bound at `/data` and another at `/data/conf`) is made in that bound
directory, as runc makes it in the container's root: the directory is the pod's volume or the
node's copy of a hostPath, and covering it would hide the pod's new files there from the other
containers sharing it (binds of the machine's own `MACHINE_SOURCES` excepted). Any other
mountpoint, projected file or
working directory that does not exist is made on a tmpfs of the pod's own: when its nearest
existing ancestor is not already one of the sandbox's tmpfs, that ancestor is covered by a tmpfs
(same mode and owner) holding its original entries, each bound back (symbolic links copied),
and the missing path is created there. For `/` itself (`/host/opt/cni/bin` in the node agent's
DaemonSet) the new tmpfs becomes the root with `pivot_root`, the old root's top-level entries
bound in and the old root detached. Why this rather than always a fresh root: most pods need no
new top-level directory, and covering only the ancestor that lacks the path costs a handful of
bind mounts, where a fresh root would cost one per top-level entry for every container start;
and the view stays the machine's own everywhere else, so new files the machine writes there are
seen. (An entry added to a covered directory after the pod started is not seen in it.)

Mount propagation: the namespace's mounts are made slaves of the machine's (runc's default
root propagation, "rslave"): nothing mounted in a pod reaches the machine, while a network
namespace bound under the machine's `/run/netns` after the pod started appears in the pod's bind
of it (the node agent's `mountPropagation: HostToContainer`).

The pod's network namespace allows unprivileged binds from port 0 (set by the kubelet, as
container runtimes do), so nginx on port 80 needs no capability.

`Sandbox` is the plan, plain data (it travels as JSON on the command line and in the runtime's
status for `wisp exec`); `python -m runtime.sandbox SPEC -- COMMAND`, run by `ip netns exec`
as root, carries it out and execs COMMAND. Anything it cannot do ends it with a message on
stderr (the pod's log) and status 1 before COMMAND runs: a pod never starts unconfined. Only the
standard library is imported, so the step costs an interpreter start (~20 ms) per container.

`node_view_sandbox(view)` is how the kubelet runs a CNI plugin "on the node": root, privileged,
`/run` hidden but `/run/netns` bound back, and the node's own node-local directories
(`runtime/kube/nodeview.py` NODE_DIRS) bound at their usual paths.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import stat
import sys
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the sandbox step itself imports only the standard library
    from runtime.kube.nodeview import NodeView

# Outside the ranges distributions give to users and services, below 2^31 (some tools read uids
# as signed) and clear of the overflow uid 65534; 2^24 uids leave hash collisions rare, and the
# kubelet probes past one among its own pods.
POD_UID_BASE = 2_000_000_000
POD_UID_SPAN = 1 << 24

ALWAYS_HIDDEN = ("/run", "/var/run", "/dev/shm")  # /var/run is usually /run itself
TMPFS_OPTIONS = "size=64m"
# World-writable with the sticky bit, as on any machine.
SHARED_TMPFS = ("/dev/shm",)
NAME_FILES = ("/etc/resolv.conf", "/etc/hosts")  # `ip netns exec` binds the pod's over these
NETNS_DIR = "/run/netns"
# runtime/kube/nodeview.py MACHINE_PATHS: bound from the machine itself, never a pod's or node's copy.
MACHINE_SOURCES = ("/proc", "/sys", "/dev", "/run/netns", "/var/run/netns")

# linux/capability.h, in order: the number of a capability is its index.
CAPABILITIES = (
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
    "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW",
    "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
    "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD",
    "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG",
    "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
)

CLONE_NEWNS = 0x00020000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
MS_REMOUNT, MS_BIND, MS_REC = 0x20, 0x1000, 0x4000
MS_SLAVE = 0x80000
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 0x400, 0x800, 0x200000
MNT_DETACH = 2
# statvfs's f_flag bits for these are the mount flags' own values (ST_NOSUID == MS_NOSUID, ...),
# except ST_RELATIME (4096).
_KEPT_ON_REMOUNT = ((os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV), (os.ST_NOEXEC, MS_NOEXEC),
                    (os.ST_NOATIME, MS_NOATIME), (os.ST_NODIRATIME, MS_NODIRATIME), (4096, MS_RELATIME))
PR_SET_KEEPCAPS, PR_CAPBSET_READ, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT = 8, 23, 24, 38, 47
PR_CAP_AMBIENT_RAISE, PR_CAP_AMBIENT_CLEAR_ALL = 2, 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_SYS_CAPSET = {"x86_64": 126, "aarch64": 91}
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}


class SandboxError(RuntimeError):
    """The sandbox could not be set up; the message says which step and why."""


@dataclass(slots=True, frozen=True)
class Sandbox:
    """What a pod's process is confined to (see the module docstring)."""

    uid: int
    gid: int
    hide: tuple[str, ...] = ALWAYS_HIDDEN  # covered with an empty tmpfs
    expose: tuple[str, ...] = ()  # bound back read-only inside what `hide` covers
    project: tuple[tuple[str, str], ...] = ()  # (file on the machine, path in the pod)
    workdir: str = "/"
    binds: tuple[tuple[str, str, bool], ...] = ()  # (machine path, path in the pod, read_only)
    capabilities: tuple[str, ...] = ()  # kept, by name ("NET_ADMIN"); () = none
    privileged: bool = False  # every capability, no no_new_privs

    def wrap(self, command: list[str], python: str = sys.executable) -> list[str]:
        """The command line that runs `command` inside this sandbox (after `ip netns exec`)."""
        return [python, "-P", "-m", "runtime.sandbox", self.to_json(), "--", *command]

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Sandbox:
        try:
            data = json.loads(text)
            privileged = data.get("privileged", False)
            if not isinstance(privileged, bool):
                raise ValueError(f"privileged must be true or false, not {privileged!r}")
            return cls(uid=_id(data["uid"]), gid=_id(data["gid"]),
                       hide=tuple(_path(p) for p in data.get("hide", ALWAYS_HIDDEN)),
                       expose=tuple(_path(p) for p in data.get("expose", ())),
                       project=tuple((_path(src), _path(dst)) for src, dst in data.get("project", ())),
                       workdir=_path(data.get("workdir", "/")),
                       binds=tuple(_bind(b) for b in data.get("binds", ())),
                       capabilities=tuple(capability_name(c) for c in data.get("capabilities", ())),
                       privileged=privileged)
        except (ValueError, KeyError, TypeError) as exc:
            raise SandboxError(f"unreadable sandbox specification: {exc}") from None


def _id(value: object) -> int:
    # Root is a legitimate ask (securityContext.runAsUser: 0, the node view); -1 means "unchanged"
    # to the set*id calls, so it never reaches them.
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**32 - 1:
        raise ValueError(f"uid/gid {value!r} is not an id")
    return value


def _path(value: object) -> str:
    if not isinstance(value, str) or not value.startswith("/"):
        raise ValueError(f"{value!r} is not an absolute path")
    return value


def _bind(value: object) -> tuple[str, str, bool]:
    if not isinstance(value, (list, tuple)) or len(value) != 3 or not isinstance(value[2], bool):
        raise ValueError(f"bind {value!r} is not [machine path, pod path, read_only]")
    return _path(value[0]), _path(value[1]), value[2]


def capability_name(name: object) -> str:
    """`name` as the sandbox keeps it ("NET_ADMIN"; "CAP_NET_ADMIN" and "net_admin" are accepted).
    ValueError for a name Linux does not have."""
    if not isinstance(name, str):
        raise ValueError(f"capability {name!r} is not a name")
    upper = name.upper()
    upper = upper[4:] if upper.startswith("CAP_") else upper
    if upper not in CAPABILITIES:
        raise ValueError(f"unknown capability {name!r}")
    return upper


# -- planning (pure, given how to look at the file system) ------------------------------------
def pod_uid(prefix: str, namespace: str, name: str, taken: Iterable[int] = ()) -> int:
    """The uid (and gid) of pod `namespace/name` of mesh `prefix`: stable, and not in `taken`."""
    used = set(taken)
    digest = int.from_bytes(hashlib.sha256(f"{prefix}/{namespace}/{name}".encode()).digest()[:8], "big")
    for step in range(POD_UID_SPAN):
        uid = POD_UID_BASE + (digest + step) % POD_UID_SPAN
        if uid not in used:
            return uid
    raise SandboxError("no pod uid is free")


def program_paths(bin_dir: str | os.PathLike[str]) -> list[str]:
    """What a pod runs wisp's own programs from (wisp-echo, wisp-waypoint, `python` in `wisp
    exec`): the interpreter's installation, the virtual environment, its scripts and wisp's
    source, each as its real path."""
    # runtime/sandbox.py → the folder holding the packages (wisp/, runtime/, ztunnel/, …).
    packages = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return [os.path.realpath(p) for p in (sys.base_prefix, sys.prefix, bin_dir, packages)]


def others_may_enter(path: str) -> bool:
    """Can a process of an unrelated uid and gid traverse directory `path`?"""
    try:
        return bool(os.stat(path).st_mode & stat.S_IXOTH)
    except OSError:
        return False


def plan(uid: int, gid: int, *, run_root: str, needed: Iterable[str],
         project: Iterable[tuple[str, str]] = (), workdir: str = "/",
         may_enter: Callable[[str], bool] = others_may_enter,
         resolve: Callable[[str], str] = os.path.realpath) -> Sandbox:
    """The sandbox of a pod running as `uid`/`gid`.

    `run_root` is the mesh's run directory (hidden); `needed` are directories the pod must read
    and execute from (the interpreter, the virtual environment, wisp itself): each one under a
    hidden directory or under one others may not enter has that directory covered and itself
    bound back read-only. Name files that are symbolic links into a hidden directory (systemd-
    resolved's /etc/resolv.conf → /run/systemd/resolve/…) are projected, so names still resolve.
    """
    hide: list[str] = []
    for path in (*ALWAYS_HIDDEN, run_root):
        real = resolve(path)
        if not any(_within(real, h) for h in hide):
            hide.append(real)
    expose: list[str] = []
    for path in sorted({os.path.normpath(p) for p in needed}):
        cover = _first_closed_ancestor(path, hide, may_enter)
        if cover is None:
            continue
        if cover not in hide:
            hide.append(cover)
        if not any(_within(path, e) for e in expose):
            expose = [e for e in expose if not _within(e, path)] + [path]
    # A directory inside another covered one is hidden already.
    hide = [h for h in hide if not any(other != h and _within(h, other) for other in hide)]
    projected = list(project)
    for name in NAME_FILES:
        real = resolve(name)
        if real != name and any(_within(real, h) for h in hide) and (real, real) not in projected:
            projected.append((real, real))
    return Sandbox(uid, gid, tuple(hide), tuple(expose), tuple(projected), workdir)


def _within(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def _first_closed_ancestor(path: str, hidden: list[str], may_enter: Callable[[str], bool]) -> str | None:
    parts = [p for p in path.split("/") if p]
    for depth in range(1, len(parts) + 1):
        ancestor = "/" + "/".join(parts[:depth])
        if ancestor in hidden:
            return ancestor
        if depth < len(parts) and not may_enter(ancestor):
            return ancestor
    return None


def node_view_sandbox(view: NodeView) -> Sandbox:
    """How a program runs "on the node" `view` describes (the kubelet's CNI plugins): root and
    privileged, as a container runtime runs plugins; the machine's `/run` hidden but
    `/run/netns` (the pods' network namespaces) bound back; the node's NODE_DIRS bound at their
    node paths, so a plugin reads `/etc/cni/net.d`, `/opt/cni/bin`, `/var/lib/cni` and the
    agents' sockets under `/var/run` of this node. The node's directories are created here (under
    the node's directory on the machine) so the binds have a source."""
    from runtime.kube.nodeview import NODE_DIRS

    binds: list[tuple[str, str, bool]] = [(NETNS_DIR, NETNS_DIR, False)]
    for path in NODE_DIRS:
        source = view.host_path(path)
        source.mkdir(mode=0o755, parents=True, exist_ok=True)
        binds.append((str(source), path, False))
    return Sandbox(uid=0, gid=0, hide=ALWAYS_HIDDEN, binds=tuple(binds), privileged=True)


# -- carrying it out (the child, as root, in the pod's network namespace) ----------------------------
@dataclass(slots=True)
class _Libc:
    lib: ctypes.CDLL = field(default_factory=lambda: ctypes.CDLL(None, use_errno=True))

    def call(self, what: str, name: str, *args) -> int:
        result = getattr(self.lib, name)(*args)
        if result == -1:
            code = ctypes.get_errno()
            raise SandboxError(f"{what}: {os.strerror(code)} ({errno.errorcode.get(code, code)})")
        return result

    def mount(self, source: str | None, target: str | None, fstype: str | None, flags: int,
              data: str | None, what: str) -> None:
        enc = (lambda s: None if s is None else s.encode())
        self.call(what, "mount", enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data))


@dataclass(slots=True)
class _Entry:
    """An entry of a directory about to be covered, to be put back on the cover."""

    name: str
    kind: str  # "dir", "file" (anything else that is not a link) or "link"
    link: str | None = None
    handle: int | None = None


class _View:
    """The pod's mount namespace while it is built: which directories are on a tmpfs of the
    sandbox's own (`ours`, by device), where a missing path may be created."""

    def __init__(self, libc: _Libc) -> None:
        self.libc = libc
        self.ours: set[int] = set()
        self.old_root: str | None = None  # attached until finish(): handles opened before point into it
        self.bound: list[tuple[str, bool]] = []  # (bind target, a mountpoint may be made in it), in mount order

    def tmpfs(self, path: str, what: str, mode: int = 0o755, uid: int = 0, gid: int = 0) -> None:
        self.libc.mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV,
                        f"mode={mode:o},uid={uid},gid={gid},{TMPFS_OPTIONS}", what)
        self.ours.add(os.stat(path).st_dev)

    def is_ours(self, path: str) -> bool:
        return os.stat(path).st_dev in self.ours

    def ensure(self, path: str, *, directory: bool) -> bool:
        """Make `path` exist in this view (a directory or an empty file), on a tmpfs of ours when
        it must be created. True if it was created."""
        real = os.path.realpath(path)
        if os.path.lexists(real):
            if os.path.isdir(real) != directory:
                raise SandboxError(f"cannot mount a {'directory' if directory else 'file'} at {path}: "
                                   f"{real} is {'a directory' if os.path.isdir(real) else 'not a directory'}")
            return False
        ancestor = real
        while not os.path.lexists(ancestor):
            ancestor = os.path.dirname(ancestor)
        if not os.path.isdir(ancestor):
            raise SandboxError(f"cannot create {path} in the pod: {ancestor} is not a directory")
        if not self.is_ours(ancestor) and not self._in_writable_volume(ancestor):
            self.cover(ancestor)
        try:
            os.makedirs(real if directory else os.path.dirname(real), mode=0o755, exist_ok=True)
            if not directory:
                os.close(os.open(real, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644))
        except OSError as exc:
            raise SandboxError(f"cannot create {path} in the pod: {exc}") from None
        return True

    def _in_writable_volume(self, directory: str) -> bool:
        # A mountpoint under a read-write volume is made in the volume, as runc makes it in the
        # container's root with the volume bound there: covering the volume instead would send
        # the pod's new files at its top to a tmpfs, unseen by the other containers sharing it.
        for target, in_place in reversed(self.bound):  # the last bind holding it is the one seen
            if _within(directory, target):
                return in_place and not os.statvfs(directory).f_flag & os.ST_RDONLY
        return False

    def writable_dir(self, path: str) -> None:
        """Make directory `path` one whose new entries land on a tmpfs of ours."""
        if not self.ensure(path, directory=True) and not self.is_ours(path):
            self.cover(os.path.realpath(path))

    def cover(self, directory: str) -> None:
        """Put a tmpfs of ours over `directory` with its entries bound back."""
        if directory == "/":
            self._new_root()
            return
        st = os.stat(directory)
        entries = _entries(directory)
        try:
            self.tmpfs(directory, f"covering {directory} to create a mountpoint in it",
                       stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
            self._put_back(directory, entries)
        finally:
            _close(entries)

    def _new_root(self) -> None:
        # A tmpfs on /tmp (any directory would do) becomes the root; after pivot_root the old
        # root, at /.oldroot, shows its own /tmp again, so every entry is bound in from there.
        stage = "/tmp" if os.path.isdir("/tmp") and not os.path.islink("/tmp") else None
        if stage is None:
            raise SandboxError("cannot build a new root for the pod: there is no /tmp to stage it in")
        self.libc.mount("tmpfs", stage, "tmpfs", MS_NOSUID | MS_NODEV, f"mode=755,{TMPFS_OPTIONS}",
                        "mounting the pod's new root")
        old = "/.oldroot"
        os.mkdir(stage + old, 0o700)
        number = _syscall_number(_SYS_PIVOT_ROOT, "pivot_root")
        self.libc.call("pivot_root to the pod's new root", "syscall", ctypes.c_long(number),
                       stage.encode(), (stage + old).encode())
        os.chdir("/")
        self.ours.add(os.stat("/").st_dev)
        entries = _entries(old)
        try:
            # The new root has no /proc until it is bound in: reach the handles through the old one.
            self._put_back("/", [e for e in entries if e.name != old.lstrip("/")], proc=old + "/proc")
        finally:
            _close(entries)
        self.old_root = old

    def finish(self) -> None:
        """Let go of the old root (after every bind: their sources may be in it)."""
        if self.old_root is not None:
            self.libc.call("detaching the old root", "umount2", self.old_root.encode(), MNT_DETACH)
            os.rmdir(self.old_root)
            self.old_root = None

    def _put_back(self, directory: str, entries: list[_Entry], proc: str = "/proc") -> None:
        for entry in entries:
            target = os.path.join(directory, entry.name)
            if entry.kind == "link":
                os.symlink(entry.link, target)
                continue
            if entry.kind == "dir":
                os.mkdir(target, 0o755)
            else:
                os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))
            self.libc.mount(f"{proc}/self/fd/{entry.handle}", target, None, MS_BIND | MS_REC, None,
                            f"binding {target} back")

    def bind(self, handle: int, source: str, target: str, read_only: bool, extra_flags: int = 0) -> None:
        self.ensure(target, directory=stat.S_ISDIR(os.fstat(handle).st_mode))
        self.libc.mount(f"/proc/self/fd/{handle}", target, None, MS_BIND | MS_REC, None,
                        f"binding {source} at {target}")
        # A machine path (/run/netns, /proc, /dev) stays as it is: nothing is made in it.
        in_place = not read_only and stat.S_ISDIR(os.fstat(handle).st_mode) and not any(
            _within(os.path.normpath(source), machine) for machine in MACHINE_SOURCES)
        self.bound.append((os.path.realpath(target), in_place))
        if read_only:
            flags = MS_BIND | MS_REMOUNT | MS_RDONLY | extra_flags
            kept = os.statvfs(target).f_flag
            flags |= sum(mount_flag for st_flag, mount_flag in _KEPT_ON_REMOUNT if kept & st_flag)
            self.libc.mount(None, target, None, flags, None, f"making {target} read-only")


def _entries(directory: str) -> list[_Entry]:
    entries: list[_Entry] = []
    try:
        for name in sorted(os.listdir(directory)):
            path = os.path.join(directory, name)
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                entries.append(_Entry(name, "link", link=os.readlink(path)))
            else:
                handle = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
                entries.append(_Entry(name, "dir" if stat.S_ISDIR(mode) else "file", handle=handle))
    except OSError as exc:
        _close(entries)
        raise SandboxError(f"cannot read {directory} to cover it: {exc}") from None
    return entries


def _close(entries: list[_Entry]) -> None:
    for entry in entries:
        if entry.handle is not None:
            os.close(entry.handle)
            entry.handle = None


def _open_path(path: str, why: str) -> int:
    try:
        return os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError as exc:
        raise SandboxError(f"cannot open {path} to {why}: {exc}") from None


def _depth(path: str) -> int:
    return len([p for p in os.path.normpath(path).split("/") if p])


def enter(sandbox: Sandbox, libc: _Libc | None = None) -> None:
    """Confine this process as `sandbox` says: mounts first (as root), then the user, then the
    capabilities. Raises SandboxError naming the step that failed."""
    libc = libc or _Libc()
    keep = capability_numbers(sandbox)  # an unknown name fails before anything is done
    libc.call("unshare(CLONE_NEWNS)", "unshare", CLONE_NEWNS)
    libc.mount("none", "/", None, MS_REC | MS_SLAVE, None, "making / a slave of the machine's mounts")
    contents = []
    for source, target in sandbox.project:
        try:
            with open(source, "rb") as f:
                contents.append((target, f.read()))
        except OSError as exc:
            raise SandboxError(f"cannot read {source} to project into the pod: {exc}") from None
    view = _View(libc)
    # Every source is opened before anything is covered: a bind's source may be hidden (/run/netns).
    mounts: list[tuple[int, str, str, bool, int]] = []
    try:
        for path in sandbox.expose:
            mounts.append((_open_path(path, "bind into the pod"), path, path, True, MS_NOSUID | MS_NODEV))
        for source, target, read_only in sandbox.binds:
            mounts.append((_open_path(source, f"bind at {target}"), source, target, read_only, 0))
        for path in sandbox.hide:
            if not os.path.isdir(path):
                continue
            mode = 0o1777 if path in SHARED_TMPFS else 0o755
            view.tmpfs(path, f"covering {path}", mode)
        # Parents before children, so a bind inside another bind lands on it.
        for handle, source, target, read_only, extra in sorted(mounts, key=lambda m: _depth(m[2])):
            view.bind(handle, source, target, read_only, extra)
    finally:
        for handle, *_ in mounts:
            os.close(handle)
    for target, data in contents:
        view.writable_dir(os.path.dirname(target))
        _write_projected(target, data, sandbox.uid, sandbox.gid)
    try:
        if view.ensure(sandbox.workdir, directory=True):
            os.chown(sandbox.workdir, sandbox.uid, sandbox.gid)
        os.chdir(sandbox.workdir)
    except (OSError, SandboxError) as exc:
        raise SandboxError(f"cannot enter the working directory {sandbox.workdir}: {exc}") from None
    view.finish()
    drop_privileges(sandbox.uid, sandbox.gid, libc, keep=keep, privileged=sandbox.privileged)


def capability_numbers(sandbox: Sandbox) -> list[int]:
    """The capabilities `sandbox` keeps, as numbers this kernel knows."""
    last = _last_cap()
    held = [cap for cap in range(last + 1) if _in_bounding_set(cap)]
    if sandbox.privileged:
        return held  # all there are: a runtime cannot hand out what it was not given
    numbers = []
    for name in sandbox.capabilities:
        try:
            number = CAPABILITIES.index(capability_name(name))
        except ValueError as exc:
            raise SandboxError(str(exc)) from None
        if number > last:
            raise SandboxError(f"capability {name} is not known to this kernel (last is {last})")
        if number not in held:
            raise SandboxError(f"capability {name} is not in the runtime's own bounding set")
        numbers.append(number)
    return sorted(set(numbers))


def _write_projected(target: str, data: bytes, uid: int, gid: int) -> None:
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o400)
        try:
            os.fchown(fd, uid, gid)
            os.write(fd, data)
        finally:
            os.close(fd)
    except OSError as exc:
        raise SandboxError(f"cannot project {target} into the pod: {exc}") from None


def drop_privileges(uid: int, gid: int, libc: _Libc | None = None, *, keep: Iterable[int] = (),
                    privileged: bool = False) -> None:
    """Become `uid`/`gid` with no supplementary groups and only the capabilities `keep` (numbers),
    now and after exec; no_new_privs unless `privileged`."""
    libc = libc or _Libc()
    kept = sorted(set(keep))
    try:
        os.setgroups([])
        os.setresgid(gid, gid, gid)
    except OSError as exc:
        raise SandboxError(f"cannot take gid {gid}: {exc}") from None
    # The bounding set needs CAP_SETPCAP to shrink, so it goes while we are still root; root
    # gets the bounding set back at exec, which is what limits a root pod to `keep`.
    for cap in range(_last_cap() + 1):
        if cap not in kept:
            libc.call(f"dropping capability {cap} from the bounding set", "prctl", PR_CAPBSET_DROP, cap, 0, 0, 0)
    libc.call("clearing ambient capabilities", "prctl", PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    if not privileged:
        libc.call("setting no_new_privs", "prctl", PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    if kept:
        # Without it, leaving uid 0 empties the permitted set and nothing could be kept.
        libc.call("keeping capabilities across the uid change", "prctl", PR_SET_KEEPCAPS, 1, 0, 0, 0)
    try:
        os.setresuid(uid, uid, uid)
    except OSError as exc:
        raise SandboxError(f"cannot take uid {uid}: {exc}") from None
    _set_capability_sets(libc, kept)
    # Ambient capabilities are what a non-root uid keeps across exec of an ordinary file.
    for cap in kept:
        libc.call(f"raising ambient capability {cap}", "prctl", PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0)


def _last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 40


def _in_bounding_set(cap: int) -> bool:
    return ctypes.CDLL(None).prctl(PR_CAPBSET_READ, cap, 0, 0, 0) == 1


def _syscall_number(table: dict[str, int], name: str) -> int:
    number = table.get(os.uname().machine)
    if number is None:
        raise SandboxError(f"no {name} system call number known for {os.uname().machine}")
    return number


def _set_capability_sets(libc: _Libc, kept: list[int]) -> None:
    """capset(2): effective, permitted and inheritable exactly `kept` (the inheritable set
    survives setuid otherwise, and ambient capabilities need it)."""
    number = _syscall_number(_SYS_CAPSET, "capset")
    words = [0, 0]
    for cap in kept:
        words[cap // 32] |= 1 << (cap % 32)
    header = (ctypes.c_uint32 * 2)(_LINUX_CAPABILITY_VERSION_3, 0)
    # Two {effective, permitted, inheritable} structs: the low 32 capabilities, then the high.
    data = (ctypes.c_uint32 * 6)(words[0], words[0], words[0], words[1], words[1], words[1])
    libc.call("setting the capability sets", "syscall", ctypes.c_long(number), header, data)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 3 or args[1] != "--":
        print("usage: python -m runtime.sandbox SPEC -- COMMAND [ARG…]", file=sys.stderr)
        return 2
    command = args[2:]
    try:
        enter(Sandbox.from_json(args[0]))
    except SandboxError as exc:
        print(f"wisp sandbox: {exc}; not starting {command[0]}", file=sys.stderr)
        return 1
    try:
        os.execvp(command[0], command)
    except FileNotFoundError:
        print(f"wisp sandbox: command not found: {command[0]}", file=sys.stderr)
        return 127
    except OSError as exc:
        print(f"wisp sandbox: cannot run {command[0]}: {exc}", file=sys.stderr)
        return 126
    return 0  # not reached: execvp replaced this process


if __name__ == "__main__":
    sys.exit(main())
