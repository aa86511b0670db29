"""Installing wisp-cni into a scratch host root (tmp dirs standing in for /etc/cni/net.d and
/opt/cni/bin) chained after a real bridge + host-local primary, and taking it out again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cni import install as cni_install
from cni.install import STATE_FILE, HostPaths, InstallError, install, uninstall

# As a cluster's primary network writes it: tabs, its own key order, no trailing newline — so a
# restore that re-serialises instead of giving the bytes back would show.
BRIDGE_CONFLIST = (
    b'{\n\t"cniVersion": "1.0.0",\n\t"name": "cbr0",\n\t"plugins": [\n'
    b'\t\t{"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true,\n'
    b'\t\t "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.1.0/24"}]],\n'
    b'\t\t          "routes": [{"dst": "0.0.0.0/0"}]}},\n'
    b'\t\t{"type": "portmap", "capabilities": {"portMappings": true}}\n\t]\n}'
)
BRIDGE_CONF = (
    b'{"cniVersion":"0.4.0","name":"mynet","type":"bridge","bridge":"cni0","isGateway":true,'
    b'"ipam":{"type":"host-local","subnet":"10.22.0.0/16","routes":[{"dst":"0.0.0.0/0"}]}}\r\n'
)
SOCKET = "/var/run/wisp/cni.sock"


@pytest.fixture
def host(tmp_path: Path) -> HostPaths:
    (tmp_path / "etc/cni/net.d").mkdir(parents=True)
    (tmp_path / "opt/cni/bin").mkdir(parents=True)
    return HostPaths(str(tmp_path / "etc/cni/net.d"), str(tmp_path / "opt/cni/bin"))


def snapshot(paths: HostPaths) -> dict[str, tuple[bytes, int]]:
    found = {}
    for directory in (paths.conf_dir, paths.bin_dir):
        for entry in os.scandir(directory):
            found[entry.path] = (Path(entry.path).read_bytes(), entry.stat().st_mode)
    return found


def conf(paths: HostPaths, name: str) -> Path:
    return Path(paths.conf_dir) / name


def test_chains_after_the_primary_bridge_conflist(host):
    conf(host, "10-cbr0.conflist").write_bytes(BRIDGE_CONFLIST)
    done = install(host, SOCKET)
    assert done.changed and done.conflist == str(conf(host, "10-cbr0.conflist"))
    written = json.loads(conf(host, "10-cbr0.conflist").read_bytes())
    original = json.loads(BRIDGE_CONFLIST)
    assert written["name"] == "cbr0" and written["cniVersion"] == "1.0.0"
    assert written["plugins"][:2] == original["plugins"]
    assert written["plugins"][2] == {"type": "wisp-cni", "agent_socket": SOCKET}
    assert sorted(os.listdir(host.conf_dir)) == sorted(["10-cbr0.conflist", STATE_FILE])


def test_the_launcher_runs_the_plugin(host):
    conf(host, "10-cbr0.conflist").write_bytes(BRIDGE_CONFLIST)
    launcher = install(host, SOCKET).launcher
    assert os.access(launcher, os.X_OK)
    done = subprocess.run([launcher], input=b'{"cniVersion": "1.0.0"}', capture_output=True, check=False,
                          env={"CNI_COMMAND": "VERSION", "PATH": os.environ["PATH"]}, cwd="/")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["supportedVersions"] == ["0.3.1", "0.4.0", "1.0.0"]


def test_uninstall_restores_the_original_conflist_byte_for_byte(host):
    conf(host, "10-cbr0.conflist").write_bytes(BRIDGE_CONFLIST)
    os.chmod(conf(host, "10-cbr0.conflist"), 0o600)
    before = snapshot(host)
    install(host, SOCKET)
    assert uninstall(host) is True
    assert snapshot(host) == before


def test_a_single_plugin_conf_becomes_a_conflist_and_comes_back(host):
    conf(host, "10-mynet.conf").write_bytes(BRIDGE_CONF)
    before = snapshot(host)
    done = install(host, SOCKET)
    assert done.conflist == str(conf(host, "10-mynet.conflist"))
    assert not conf(host, "10-mynet.conf").exists()
    written = json.loads(conf(host, "10-mynet.conflist").read_bytes())
    assert (written["name"], written["cniVersion"]) == ("mynet", "0.4.0")
    assert written["plugins"] == [json.loads(BRIDGE_CONF), {"type": "wisp-cni", "agent_socket": SOCKET}]
    uninstall(host)
    assert snapshot(host) == before


def test_installing_twice_changes_nothing_the_second_time(host):
    conf(host, "10-cbr0.conflist").write_bytes(BRIDGE_CONFLIST)
    install(host, SOCKET)
    after_first = snapshot(host)
    assert install(host, SOCKET).changed is False
    assert snapshot(host) == after_first
    uninstall(host)
    assert conf(host, "10-cbr0.conflist").read_bytes() == BRIDGE_CONFLIST


def test_a_new_agent_socket_replaces_the_entry_and_uninstall_still_restores(host):
    conf(host, "10-cbr0.conflist").write_bytes(BRIDGE_CONFLIST)
    install(host, SOCKET)
    install(host, "/run/other.sock")
    plugins = json.loads(conf(host, "10-cbr0.conflist").read_bytes())["plugins"]
    assert [p["type"] for p in plugins] == ["bridge", "portmap", "wisp-cni"]
    assert plugins[-1]["agent_socket"] == "/run/other.sock"
    uninstall(host)
    assert conf(host, "10-cbr0.conflist").read_bytes() == BRIDGE_CONFLIST


def test_the_runtimes_choice_is_the_first_file_by_name(host):
    conf(host, "10-cbr0.conflist").write_bytes(BRIDGE_CONFLIST)
    conf(host, "99-loopback.conf").write_bytes(b'{"cniVersion": "1.0.0", "name": "lo", "type": "loopback"}')
    conf(host, "00-notes.txt").write_bytes(b"not a CNI file")
    install(host, SOCKET)
    assert "wisp-cni" in conf(host, "10-cbr0.conflist").read_text()
    assert "wisp-cni" not in conf(host, "99-loopback.conf").read_text()


def test_a_named_primary_is_used(host):
    conf(host, "10-cbr0.conflist").write_bytes(BRIDGE_CONFLIST)
    conf(host, "20-mynet.conf").write_bytes(BRIDGE_CONF)
    install(HostPaths(host.conf_dir, host.bin_dir, "20-mynet.conf"), SOCKET)
    assert conf(host, "10-cbr0.conflist").read_bytes() == BRIDGE_CONFLIST
    assert "wisp-cni" in conf(host, "20-mynet.conflist").read_text()


def test_a_primary_that_rewrote_its_file_is_chained_again_and_its_new_file_restored(host):
    conf(host, "10-cbr0.conflist").write_bytes(BRIDGE_CONFLIST)
    install(host, SOCKET)
    rewritten = BRIDGE_CONFLIST.replace(b"10.244.1.0/24", b"10.244.7.0/24")
    conf(host, "10-cbr0.conflist").write_bytes(rewritten)  # the primary network's agent, at its restart
    assert install(host, SOCKET).changed
    assert "wisp-cni" in conf(host, "10-cbr0.conflist").read_text()
    uninstall(host)
    assert conf(host, "10-cbr0.conflist").read_bytes() == rewritten


def test_uninstall_after_someone_else_edited_the_chain_removes_only_our_entry(host):
    conf(host, "10-cbr0.conflist").write_bytes(BRIDGE_CONFLIST)
    install(host, SOCKET)
    edited = json.loads(conf(host, "10-cbr0.conflist").read_bytes())
    edited["plugins"].insert(2, {"type": "bandwidth", "capabilities": {"bandwidth": True}})
    conf(host, "10-cbr0.conflist").write_text(json.dumps(edited))
    uninstall(host)
    left = json.loads(conf(host, "10-cbr0.conflist").read_bytes())
    assert [p["type"] for p in left["plugins"]] == ["bridge", "portmap", "bandwidth"]
    assert not conf(host, STATE_FILE).exists()
    assert os.listdir(host.bin_dir) == []


def test_uninstall_without_an_install_changes_nothing(host):
    conf(host, "10-cbr0.conflist").write_bytes(BRIDGE_CONFLIST)
    before = snapshot(host)
    assert uninstall(host) is False
    assert snapshot(host) == before


def test_uninstall_leaves_a_foreign_wisp_cni_binary_alone(host):
    conf(host, "10-cbr0.conflist").write_bytes(BRIDGE_CONFLIST)
    (Path(host.bin_dir) / "wisp-cni").write_bytes(b"\x7fELF someone else's")
    uninstall(host)
    assert (Path(host.bin_dir) / "wisp-cni").read_bytes() == b"\x7fELF someone else's"


# -- bad input: a clear error and nothing changed -------------------------------------------------
BAD = [
    ("no configuration at all", {}, "no CNI network configuration"),
    ("only files runtimes ignore", {"README": b"x", "10-net.conf.bak": BRIDGE_CONF}, "no CNI network configuration"),
    ("unparseable conflist", {"10-cbr0.conflist": BRIDGE_CONFLIST[:-3]}, "is not JSON"),
    ("not an object", {"10-cbr0.conflist": b"[1, 2]"}, "not a JSON object"),
    ("neither plugins nor type", {"10-x.conf": b'{"cniVersion": "1.0.0", "name": "x"}'}, "neither `plugins` nor `type`"),
    ("empty plugins", {"10-x.conflist": b'{"cniVersion": "1.0.0", "name": "x", "plugins": []}'}, "non-empty list"),
    ("plugin without type", {"10-x.conflist": b'{"cniVersion": "1.0.0", "name": "x", "plugins": [{}]}'},
     "plugins[0] has no `type`"),
    ("network without name", {"10-x.conflist": b'{"cniVersion": "1.0.0", "plugins": [{"type": "bridge"}]}'},
     "has no `name`"),
    ("unsupported cniVersion", {"10-x.conflist": BRIDGE_CONFLIST.replace(b'"1.0.0"', b'"0.2.0"')},
     "cniVersion '0.2.0' is not one wisp-cni speaks"),
    ("only wisp in the chain", {"10-x.conflist": b'{"cniVersion": "1.0.0", "name": "x", "plugins": '
                                                 b'[{"type": "wisp-cni", "agent_socket": "/s"}]}'},
     "no primary plugin to chain after"),
    ("conf beside a conflist of the same name", {"10-mynet.conf": BRIDGE_CONF, "10-mynet.conflist": BRIDGE_CONFLIST},
     "exists too"),
]


@pytest.mark.parametrize(("name", "files", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_refused_without_change(host, name, files, message):
    for filename, data in files.items():
        conf(host, filename).write_bytes(data)
    before = snapshot(host)
    with pytest.raises(InstallError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")):
        install(host, SOCKET)
    assert snapshot(host) == before


def test_a_missing_bin_dir_is_refused_without_change(host, tmp_path):
    conf(host, "10-cbr0.conflist").write_bytes(BRIDGE_CONFLIST)
    before = snapshot(host)
    with pytest.raises(InstallError, match="binary directory .* does not exist"):
        install(HostPaths(host.conf_dir, str(tmp_path / "nowhere")), SOCKET)
    assert snapshot(host) == before


def test_a_write_that_fails_midway_is_rolled_back(host, monkeypatch):
    conf(host, "10-cbr0.conflist").write_bytes(BRIDGE_CONFLIST)
    before = snapshot(host)
    real = cni_install._write_atomic

    def failing(path, data, mode=0o644):
        if path.name.endswith(".conflist"):
            raise OSError(28, "No space left on device")
        real(path, data, mode)

    monkeypatch.setattr(cni_install, "_write_atomic", failing)
    with pytest.raises(InstallError, match="No space left on device"):
        install(host, SOCKET)
    assert snapshot(host) == before


def test_the_command_line_answers_bad_input_without_a_traceback(host):
    conf(host, "10-cbr0.conflist").write_bytes(b"{oops")
    root = os.path.dirname(os.path.dirname(os.path.abspath(cni_install.__file__)))
    code = f"import sys; sys.path.append({root!r}); from cni.install import main; main()"
    done = subprocess.run([sys.executable, "-P", "-c", code, "install", "--conf-dir", host.conf_dir,
                           "--bin-dir", host.bin_dir, "--agent-socket", SOCKET],
                          capture_output=True, text=True, check=False, cwd="/")
    assert done.returncode != 0
    assert "is not JSON" in done.stderr and "Traceback" not in done.stderr
    assert conf(host, "10-cbr0.conflist").read_bytes() == b"{oops"
