"""The pod sandbox (runtime/sandbox.py): the plan from the file system, and what a process
inside it can and cannot do (those tests need root, as the runtime does)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from runtime.sandbox import (
    POD_UID_BASE,
    POD_UID_SPAN,
    Sandbox,
    SandboxError,
    plan,
    pod_uid,
    program_paths,
)

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


def test_the_spec_survives_json_and_refuses_root_or_relative_paths():
    sandbox = plan(UID, UID + 1, run_root="/run/wisp", needed=[], project=[("/a/token", "/b/token")])
    assert Sandbox.from_json(sandbox.to_json()) == sandbox
    for bad in ({"uid": 0, "gid": UID}, {"uid": UID, "gid": UID, "hide": ["run"]}, {"uid": True, "gid": UID}):
        with pytest.raises(SandboxError):
            Sandbox.from_json(json.dumps(bad))


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
