"""A pod's sandbox in the local runtime: its own unprivileged user, no capabilities, a private view of the files.

Pods are the users' workloads. On a cluster the container runtime gives each one a user, no
capabilities and a filesystem without the node's secrets; the local runtime has no images, so a
pod runs the machine's own programs, but confined as a container would be:

- its own uid and gid (`POD_UID_BASE` + a hash of mesh, namespace and name; no supplementary
  groups), so it can neither signal, trace nor read another pod, a waypoint or a mesh process;
- no capabilities: bounding, inheritable and ambient sets emptied and no_new_privs set, so no
  setuid binary or file capability gives any back;
- a private mount namespace in which `/run` (the mesh's run directory with every socket, key and
  token; `/run/netns`), `/dev/shm` (key files and ztunnel workers' sockets while in use) and the
  run directory itself when it is elsewhere are empty tmpfs; a directory the pod must traverse
  but may not (a Python installation under `/root`) is covered the same way, with only what the
  pod needs bound back read-only;
- files projected into that view (a waypoint's token and the root certificate) owned by the pod,
  mode 0400, as kubelet projects a service-account token;
- working directory `/` (or the container's `workingDir`), not the runtime's, which may be a
  directory the pod must not see.

The pod's network namespace allows unprivileged binds from port 0 (set by the kubelet, as
container runtimes do), so nginx on port 80 needs no capability.

`Sandbox` is the plan, plain data (it travels as JSON on the command line and in the runtime's
status for `wisp exec`); `python -m runtime.sandbox SPEC -- COMMAND`, run by `ip netns exec`
as root, carries it out and execs COMMAND. Anything it cannot do ends it with a message on
stderr (the pod's log) and status 1 before COMMAND runs: a pod never starts unconfined. Only the
standard library is imported, so the step costs an interpreter start (~20 ms) per container.
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

# Outside the ranges distributions give to users and services, below 2^31 (some tools read uids
# as signed) and clear of the overflow uid 65534; 2^24 uids leave hash collisions rare, and the
# kubelet probes past one among its own pods.
POD_UID_BASE = 2_000_000_000
POD_UID_SPAN = 1 << 24

ALWAYS_HIDDEN = ("/run", "/var/run", "/dev/shm")  # /var/run is usually /run itself
TMPFS_OPTIONS = "size=64m"
SHARED_TMPFS = ("/dev/shm",)  # world-writable with the sticky bit, as on any machine
NAME_FILES = ("/etc/resolv.conf", "/etc/hosts")  # `ip netns exec` binds the pod's over these

CLONE_NEWNS = 0x00020000
MS_RDONLY, MS_NOSUID, MS_NODEV = 0x1, 0x2, 0x4
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 0x20, 0x1000, 0x4000, 0x40000
PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT = 24, 38, 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_SYS_CAPSET = {"x86_64": 126, "aarch64": 91}


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

    def wrap(self, command: list[str], python: str = sys.executable) -> list[str]:
        """The command line that runs `command` inside this sandbox (after `ip netns exec`)."""
        return [python, "-P", "-m", "runtime.sandbox", self.to_json(), "--", *command]

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Sandbox:
        try:
            data = json.loads(text)
            return cls(uid=_id(data["uid"]), gid=_id(data["gid"]),
                       hide=tuple(_path(p) for p in data.get("hide", ALWAYS_HIDDEN)),
                       expose=tuple(_path(p) for p in data.get("expose", ())),
                       project=tuple((_path(src), _path(dst)) for src, dst in data.get("project", ())),
                       workdir=_path(data.get("workdir", "/")))
        except (ValueError, KeyError, TypeError) as exc:
            raise SandboxError(f"unreadable sandbox specification: {exc}") from None


def _id(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 2**32 - 1:
        raise ValueError(f"uid/gid {value!r} is not a non-root id")
    return value


def _path(value: object) -> str:
    if not isinstance(value, str) or not value.startswith("/"):
        raise ValueError(f"{value!r} is not an absolute path")
    return value


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
    source = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return [os.path.realpath(p) for p in (sys.base_prefix, sys.prefix, bin_dir, os.path.dirname(source))]


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


def enter(sandbox: Sandbox, libc: _Libc | None = None) -> None:
    """Confine this process as `sandbox` says: mounts first (as root), then the user, then the
    capabilities. Raises SandboxError naming the step that failed."""
    libc = libc or _Libc()
    libc.call("unshare(CLONE_NEWNS)", "unshare", CLONE_NEWNS)
    # Nothing mounted here may leak back to the machine, nor the machine's mounts in here.
    libc.mount("none", "/", None, MS_REC | MS_PRIVATE, None, "making / private")
    contents = []
    for source, target in sandbox.project:
        try:
            with open(source, "rb") as f:
                contents.append((target, f.read()))
        except OSError as exc:
            raise SandboxError(f"cannot read {source} to project into the pod: {exc}") from None
    handles = []
    try:
        for path in sandbox.expose:
            try:
                handles.append((path, os.open(path, os.O_PATH | os.O_CLOEXEC)))
            except OSError as exc:
                raise SandboxError(f"cannot open {path} to bind into the pod: {exc}") from None
        for path in sandbox.hide:
            if not os.path.isdir(path):
                continue
            mode = "1777" if path in SHARED_TMPFS else "755"
            libc.mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, f"mode={mode},{TMPFS_OPTIONS}",
                       f"covering {path}")
        for target, data in contents:
            _write_projected(target, data, sandbox.uid, sandbox.gid)
        for path, handle in handles:
            os.makedirs(path, mode=0o755, exist_ok=True)
            libc.mount(f"/proc/self/fd/{handle}", path, None, MS_BIND | MS_REC, None, f"binding {path}")
            libc.mount(None, path, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, None,
                       f"making {path} read-only")
    finally:
        for _, handle in handles:
            os.close(handle)
    try:
        os.chdir(sandbox.workdir)
    except OSError as exc:
        raise SandboxError(f"cannot enter the working directory {sandbox.workdir}: {exc}") from None
    drop_privileges(sandbox.uid, sandbox.gid, libc)


def _write_projected(target: str, data: bytes, uid: int, gid: int) -> None:
    try:
        os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o400)
        try:
            os.fchown(fd, uid, gid)
            os.write(fd, data)
        finally:
            os.close(fd)
    except OSError as exc:
        raise SandboxError(f"cannot project {target} into the pod: {exc}") from None


def drop_privileges(uid: int, gid: int, libc: _Libc | None = None) -> None:
    """Become `uid`/`gid` with no supplementary groups and no capability, now or after exec."""
    libc = libc or _Libc()
    try:
        os.setgroups([])
        os.setresgid(gid, gid, gid)
    except OSError as exc:
        raise SandboxError(f"cannot take gid {gid}: {exc}") from None
    # The bounding set needs CAP_SETPCAP to shrink, so it goes while we are still root.
    for cap in range(_last_cap() + 1):
        libc.call(f"dropping capability {cap} from the bounding set", "prctl", PR_CAPBSET_DROP, cap, 0, 0, 0)
    libc.call("clearing ambient capabilities", "prctl", PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    libc.call("setting no_new_privs", "prctl", PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    try:
        os.setresuid(uid, uid, uid)  # clears the permitted and effective sets
    except OSError as exc:
        raise SandboxError(f"cannot take uid {uid}: {exc}") from None
    _clear_capability_sets(libc)


def _last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 63


def _clear_capability_sets(libc: _Libc) -> None:
    """capset(2) with every set empty: the inheritable set survives setuid otherwise."""
    number = _SYS_CAPSET.get(os.uname().machine)
    if number is None:
        raise SandboxError(f"no capset system call number known for {os.uname().machine}")
    header = (ctypes.c_uint32 * 2)(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()  # two {effective, permitted, inheritable} words, all zero
    libc.call("clearing the capability sets", "syscall", ctypes.c_long(number), header, data)


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
