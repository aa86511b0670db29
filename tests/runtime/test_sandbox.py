"""The pod sandbox (runtime/sandbox.py): the plan from the file system, and what a process
inside it can and cannot do (those tests need root, as the runtime does)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from runtime.kube.nodeview import NodeView
from runtime.sandbox import (
    POD_UID_BASE,
    POD_UID_SPAN,
    Sandbox,
    SandboxError,
    node_view_sandbox,
    plan,
    pod_uid,
    program_paths,
)
from tests.support.netns import random_prefix, scratch_netns

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox is entered as root")
UID = POD_UID_BASE + 4242
OTHER = POD_UID_BASE + 4343


# -- planning ----------------------------------------------------------------------------------
def test_pod_uids_are_unprivileged_stable_and_distinct_from_those_taken():
    uid = pod_uid("wisp", "shop", "web")
    assert POD_UID_BASE <= uid < POD_UID_BASE + POD_UID_SPAN
    assert pod_uid("wisp", "shop", "web") == uid
    assert pod_uid("wisp", "shop", "web", taken={uid}) != uid
    assert pod_uid("wisp-other", "shop", "web") != uid


def test_the_run_directory_run_and_dev_shm_are_always_hidden():
    sandbox = plan(UID, UID, run_root="/srv/mesh", needed=[], may_enter=lambda _: True)
    assert set(sandbox.hide) == {"/run", "/dev/shm", "/srv/mesh"}
    assert plan(UID, UID, run_root="/run/wisp", needed=[], may_enter=lambda _: True).hide == ("/run", "/dev/shm")


def test_a_needed_directory_behind_a_closed_one_is_bound_back_alone():
    closed = {"/root"}
    sandbox = plan(UID, UID, run_root="/run/wisp", may_enter=lambda p: p not in closed,
                   needed=["/root/.pyenv/versions/3.11.7", "/root/.pyenv/versions/3.11.7/bin", "/work/app/.venv"])
    assert "/root" in sandbox.hide
    assert sandbox.expose == ("/root/.pyenv/versions/3.11.7",)


def test_a_name_file_linked_into_a_hidden_directory_is_projected_so_names_resolve():
    links = {"/etc/resolv.conf": "/run/systemd/resolve/stub-resolv.conf"}
    sandbox = plan(UID, UID, run_root="/run/wisp", needed=[], may_enter=lambda _: True,
                   resolve=lambda p: links.get(p, p))
    assert sandbox.project == (("/run/systemd/resolve/stub-resolv.conf", "/run/systemd/resolve/stub-resolv.conf"),)


def test_the_spec_survives_json_and_refuses_bad_ids_relative_paths_and_unknown_capabilities():
    sandbox = dataclasses.replace(
        plan(UID, UID + 1, run_root="/run/wisp", needed=[], project=[("/a/token", "/b/token")]),
        binds=(("/srv/data", "/data", True),), capabilities=("NET_ADMIN",), privileged=True)
    assert Sandbox.from_json(sandbox.to_json()) == sandbox
    for bad in ({"uid": -1, "gid": UID}, {"uid": 2**32 - 1, "gid": UID}, {"uid": UID, "gid": UID, "hide": ["run"]},
                {"uid": True, "gid": UID}, {"uid": UID, "gid": UID, "binds": [["/a", "b", False]]},
                {"uid": UID, "gid": UID, "binds": [["/a", "/b", "no"]]},
                {"uid": UID, "gid": UID, "capabilities": ["NET_ADMIN", "FLY"]},
                {"uid": UID, "gid": UID, "privileged": "yes"}):
        with pytest.raises(SandboxError):
            Sandbox.from_json(json.dumps(bad))


def test_root_may_be_asked_for_and_capability_names_are_normalised():
    sandbox = Sandbox.from_json(json.dumps({"uid": 0, "gid": 0, "capabilities": ["cap_net_admin", "SYS_ADMIN"]}))
    assert (sandbox.uid, sandbox.capabilities) == (0, ("NET_ADMIN", "SYS_ADMIN"))


# -- inside it (root) ----------------------------------------------------------------------------
PROBE = r"""
import json, os, sys
out = {"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(), "cwd": os.getcwd()}
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
out["caps"] = {k: status[k].strip() for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")}
out["nnp"] = status["NoNewPrivs"].strip()
out["seen"] = {p: os.path.exists(p) for p in sys.argv[1:]}
def attempt(fn):
    try:
        fn()
        return "ok"
    except OSError as exc:
        return type(exc).__name__
out["read_projected"] = attempt(lambda: open(os.environ["PROJECTED"]).read())
out["write_exposed"] = attempt(lambda: open(os.path.join(sys.prefix, "wisp-sandbox-probe"), "w"))
out["setuid_root"] = attempt(lambda: os.setuid(0))
print(json.dumps(out))
"""


@pytest.fixture
def secrets_dir():
    """A run directory with a key in it, as the runtime's (outside /run so it is not hidden by that)."""
    root = Path(tempfile.mkdtemp(prefix="wisp-sandbox-run-"))
    (root / "state").mkdir()
    (root / "state" / "ca-key.pem").write_text("secret key\n")
    (root / "state" / "token").write_text("token\n")
    os.chmod(root, 0o755)
    os.chmod(root / "state", 0o755)
    yield root
    subprocess.run(["rm", "-rf", str(root)], check=True)


def _run(sandbox: Sandbox, argv: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(sandbox.wrap(argv), capture_output=True, text=True, timeout=30,
                          env={**os.environ, **env}, cwd=tempfile.gettempdir())


@needs_root
def test_a_sandboxed_process_has_its_uid_no_capabilities_and_no_view_of_the_run_directory(secrets_dir):
    key = secrets_dir / "state" / "ca-key.pem"
    # World-readable on purpose: the mount namespace alone must keep it out of sight.
    os.chmod(key, 0o644)
    token = secrets_dir / "state" / "token"
    sandbox = plan(UID, UID, run_root=str(secrets_dir), needed=program_paths(Path(sys.executable).parent),
                   project=[(str(token), str(token))])
    done = _run(sandbox, [sys.executable, "-c", PROBE, str(key), "/run/netns", str(token)], PROJECTED=str(token))
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert (out["uid"], out["gid"], out["cwd"]) == (UID, UID, "/")
    assert set(out["groups"]) <= {UID}
    assert set(out["caps"].values()) == {"0000000000000000"} and out["nnp"] == "1"
    assert out["seen"] == {str(key): False, "/run/netns": False, str(token): True}
    assert out["read_projected"] == "ok"
    assert out["write_exposed"] in ("OSError", "PermissionError")  # read-only, or not ours
    assert out["setuid_root"] == "PermissionError"
    assert key.exists()  # the machine's view is untouched


@needs_root
def test_a_projected_file_belongs_to_its_pod_alone(secrets_dir):
    token = secrets_dir / "state" / "token"
    owner = plan(UID, UID, run_root=str(secrets_dir), needed=program_paths(Path(sys.executable).parent),
                 project=[(str(token), str(token))])
    holder = subprocess.Popen(owner.wrap(["sleep", "30"]), cwd="/")
    try:
        seen = Path(f"/proc/{holder.pid}/root") / token.relative_to("/")
        deadline = time.monotonic() + 10
        # Until the sandbox is set up, its /proc root shows the machine's file.
        while not (seen.exists() and seen.stat().st_uid == UID):
            assert time.monotonic() < deadline, "the projected token never appeared"
            time.sleep(0.05)
        assert (seen.stat().st_uid, seen.stat().st_mode & 0o777) == (UID, 0o400)
        # Another pod, even one that knows where to look, cannot read it.
        other = plan(OTHER, OTHER, run_root=str(secrets_dir), needed=program_paths(Path(sys.executable).parent))
        done = _run(other, ["cat", str(seen)])
        assert done.returncode != 0 and "Permission denied" in done.stderr
    finally:
        holder.kill()
        holder.wait()


@needs_root
def test_a_sandbox_that_cannot_be_set_up_does_not_run_the_command(secrets_dir):
    sandbox = plan(UID, UID, run_root=str(secrets_dir), needed=[], project=[("/nonexistent/token", "/x/token")])
    done = _run(sandbox, ["touch", str(secrets_dir / "ran")])
    assert done.returncode == 1
    assert "cannot read /nonexistent/token" in done.stderr
    assert not (secrets_dir / "ran").exists()


@needs_root
def test_a_missing_command_is_named():
    sandbox = plan(UID, UID, run_root="/run/wisp", needed=program_paths(Path(sys.executable).parent))
    done = _run(sandbox, ["wisp-no-such-command"])
    assert (done.returncode, done.stderr.strip()) == (127, "wisp sandbox: command not found: wisp-no-such-command")


# -- binds, capabilities, the node view (root) ---------------------------------------------------
LOOK = r"""
import json, os, sys
def attempt(fn):
    try:
        return ["ok", fn()]
    except OSError as exc:
        return [type(exc).__name__, exc.errno]
def write(path):
    with open(path, "w") as f:
        f.write("from the pod")
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
out = {"caps": {k: status[k].strip() for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")},
       "nnp": status["NoNewPrivs"].strip(), "uid": os.getuid()}
for op, path in zip(sys.argv[1::2], sys.argv[2::2]):
    out[op + " " + path] = attempt({"read": lambda: open(path).read(), "write": lambda: write(path),
                                    "list": lambda: sorted(os.listdir(path)),
                                    "exists": lambda: os.path.exists(path)}[op])
print(json.dumps(out))
"""


def _look(sandbox: Sandbox, *checks: str) -> dict:
    done = _run(sandbox, [sys.executable, "-c", LOOK, *checks])
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _pod(uid: int = UID, **changes) -> Sandbox:
    base = plan(uid, uid, run_root="/run/wisp", needed=program_paths(Path(sys.executable).parent))
    return dataclasses.replace(base, **changes)


def _mask(*caps: int) -> str:
    return f"{sum(1 << c for c in caps):016x}"


@pytest.fixture
def volume():
    """A directory on the machine standing for a volume, writable by the pod's uid."""
    root = Path(tempfile.mkdtemp(prefix="wisp-sandbox-vol-"))
    (root / "data.txt").write_text("on the machine\n")
    os.chown(root, UID, UID)
    os.chmod(root, 0o755)
    yield root
    subprocess.run(["rm", "-rf", str(root)], check=True)


@needs_root
def test_a_read_write_bind_is_read_and_written_through(volume):
    done = _look(_pod(binds=((str(volume), "/data", False),)), "read", "/data/data.txt", "write", "/data/new.txt")
    assert done["read /data/data.txt"] == ["ok", "on the machine\n"]
    assert done["write /data/new.txt"][0] == "ok"
    assert (volume / "new.txt").read_text() == "from the pod"
    assert (volume / "new.txt").stat().st_uid == UID


@needs_root
def test_a_read_only_bind_refuses_writes(volume):
    done = _look(_pod(binds=((str(volume), "/data", True),)), "read", "/data/data.txt", "write", "/data/new.txt")
    assert done["read /data/data.txt"] == ["ok", "on the machine\n"]
    assert done["write /data/new.txt"] == ["OSError", 30]  # EROFS, although the directory is the pod's
    assert not (volume / "new.txt").exists()


@needs_root
def test_a_bound_file_is_bound_alone_read_only(volume):
    done = _look(_pod(binds=((str(volume / "data.txt"), "/etc/wisp-config.txt", True),)),
                 "read", "/etc/wisp-config.txt", "write", "/etc/wisp-config.txt")
    assert done["read /etc/wisp-config.txt"] == ["ok", "on the machine\n"]
    assert done["write /etc/wisp-config.txt"][0] in ("OSError", "PermissionError")
    assert not os.path.exists("/etc/wisp-config.txt")


@needs_root
def test_missing_mountpoints_appear_inside_but_never_on_the_machine(volume):
    top = f"/host-{os.getpid()}"
    deep = f"/usr/share/wisp-sandbox-{os.getpid()}/conf"
    assert not os.path.exists(top) and not os.path.exists(os.path.dirname(deep))
    done = _look(_pod(binds=((str(volume), f"{top}/opt/cni/bin", True), (str(volume), deep, True))),
                 "list", f"{top}/opt/cni/bin", "list", deep, "exists", "/usr/bin/env", "list", "/tmp/..")
    assert done[f"list {top}/opt/cni/bin"] == ["ok", ["data.txt"]]
    assert done[f"list {deep}"] == ["ok", ["data.txt"]]
    assert done["exists /usr/bin/env"] == ["ok", True]  # a covered directory keeps its entries
    assert top.lstrip("/") in done["list /tmp/.."][1] and "usr" in done["list /tmp/.."][1]
    assert ".oldroot" not in done["list /tmp/.."][1]
    assert not os.path.exists(top) and not os.path.exists(os.path.dirname(deep))


@needs_root
def test_a_mountpoint_inside_a_read_write_volume_is_made_in_the_volume_which_stays_shared(volume, tmp_path):
    (tmp_path / "settings").write_text("nested\n")
    os.chmod(tmp_path, 0o755)
    done = _look(_pod(binds=((str(volume), "/data", False), (str(tmp_path), "/data/conf", True))),
                 "read", "/data/conf/settings", "write", "/data/new.txt")
    assert done["read /data/conf/settings"] == ["ok", "nested\n"]
    assert done["write /data/new.txt"][0] == "ok"
    # Written through to the volume, where another container binding it sees it (not to a cover).
    assert (volume / "new.txt").read_text() == "from the pod"
    assert (volume / "conf").is_dir()


@needs_root
def test_run_netns_stays_reachable_when_bound_even_for_namespaces_made_later():
    first, later = random_prefix() + "-a", random_prefix() + "-b"
    with scratch_netns(first):
        sandbox = _pod(binds=(("/run/netns", "/var/run/netns", True),))
        holder = subprocess.Popen(sandbox.wrap(["sleep", "30"]), cwd="/")
        try:
            seen = Path(f"/proc/{holder.pid}/root/var/run/netns")
            deadline = time.monotonic() + 10
            while not (seen / first).exists():
                assert time.monotonic() < deadline, "the bound /run/netns never showed the namespace"
                time.sleep(0.05)
            with scratch_netns(later):
                while not (seen / later).exists():
                    assert time.monotonic() < deadline, "a namespace made later did not reach the pod"
                    time.sleep(0.05)
        finally:
            holder.kill()
            holder.wait()
    # Without the bind the pod sees no namespace at all.
    assert _look(_pod(), "exists", "/run/netns")["exists /run/netns"] == ["ok", False]


@needs_root
def test_a_non_root_pod_keeps_exactly_the_capabilities_asked_for_across_exec():
    done = _look(_pod(capabilities=("NET_ADMIN", "NET_RAW")))
    want = _mask(12, 13)
    assert done["uid"] == UID
    assert done["caps"] == {"CapInh": want, "CapPrm": want, "CapEff": want, "CapBnd": want, "CapAmb": want}
    assert done["nnp"] == "1"


@needs_root
def test_root_keeps_only_the_capabilities_asked_for():
    done = _look(_pod(uid=0, capabilities=("NET_ADMIN",)))
    assert done["uid"] == 0
    assert (done["caps"]["CapEff"], done["caps"]["CapBnd"]) == (_mask(12), _mask(12))
    assert set(_look(_pod(uid=0))["caps"].values()) == {"0000000000000000"}


@needs_root
def test_privileged_keeps_every_capability_and_no_new_privs_is_off():
    ours = dict(line.split(":", 1) for line in open("/proc/self/status"))["CapBnd"].strip()
    done = _look(_pod(uid=0, privileged=True))
    assert done["caps"]["CapEff"] == done["caps"]["CapBnd"] == ours  # all the runtime has
    assert int(ours, 16) & (1 << 21)  # SYS_ADMIN among them
    assert done["nnp"] == "0"


@needs_root
def test_an_unknown_capability_stops_the_pod_before_its_command():
    sandbox = dataclasses.replace(_pod(), capabilities=("NOT_A_CAP",))
    done = _run(sandbox, ["true"])
    assert done.returncode == 1 and "unknown capability 'NOT_A_CAP'" in done.stderr


@needs_root
def test_the_node_view_shows_the_nodes_own_directories_at_their_node_paths(tmp_path):
    view = NodeView(tmp_path / "node1")
    sandbox = node_view_sandbox(view)
    assert (sandbox.uid, sandbox.privileged) == (0, True)
    (view.cni_conf_dir / "10-test.conflist").write_text("{}")
    (view.host_path("/var/run/wisp-cni") / "marker").write_text("agent")
    secret = Path("/run") / f"wisp-sandbox-secret-{os.getpid()}"
    secret.write_text("the machine's")
    try:
        with scratch_netns(random_prefix()) as netns:
            done = _look(sandbox, "list", "/etc/cni/net.d", "read", "/var/run/wisp-cni/marker",
                         "exists", str(secret), "exists", netns, "write", "/opt/cni/bin/plugin")
    finally:
        secret.unlink()
    assert done["list /etc/cni/net.d"] == ["ok", ["10-test.conflist"]]
    assert done["read /var/run/wisp-cni/marker"] == ["ok", "agent"]
    assert done[f"exists {secret}"] == ["ok", False]
    assert done[f"exists {netns}"] == ["ok", True]
    assert (view.cni_bin_dir / "plugin").read_text() == "from the pod"
