"""`wisp precheck --host` on this machine: the CNI directories (scratch ones standing in for
/etc/cni/net.d and /opt/cni/bin), the node agent's tools, and kernel support tried for real in a
throwaway network namespace — the host's own rules and sets are left as they were."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

WISP = Path(sys.executable).parent / "wisp"
BRIDGE = {"cniVersion": "1.0.0", "name": "pods", "plugins": [
    {"type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local", "subnet": "10.244.0.0/24"}}]}


def precheck(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(WISP), "precheck", "--host", *args], capture_output=True, text=True, timeout=60,
                          check=False)


@pytest.fixture
def host_root(tmp_path: Path) -> tuple[Path, Path]:
    conf, bins = tmp_path / "net.d", tmp_path / "bin"
    conf.mkdir()
    bins.mkdir()
    return conf, bins


def _host_state() -> tuple[str, str]:
    sets = subprocess.run(["ipset", "list", "-n"], capture_output=True, text=True, check=False).stdout
    rules = subprocess.run(["iptables-save"], capture_output=True, text=True, check=False).stdout
    return sets, "\n".join(line for line in rules.splitlines() if not line.startswith("#"))


@pytest.mark.skipif(os.geteuid() != 0, reason="kernel support is tried as root, as the node agent runs")
def test_a_node_with_a_primary_plugin_is_ready_and_the_host_is_untouched(host_root: tuple[Path, Path]) -> None:
    conf, bins = host_root
    (conf / "10-bridge.conflist").write_text(json.dumps(BRIDGE))
    before = _host_state()
    done = precheck("--cni-conf-dir", str(conf), "--cni-bin-dir", str(bins))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "✔ CNI configuration 10-bridge.conflist (plugins: bridge)" in done.stdout
    assert "✔ network namespaces: created and removed one" in done.stdout
    assert "✔ iptables: mangle MARK and nat REDIRECT rules accepted" in done.stdout
    assert "✔ ipset: a hash:ip set created" in done.stdout
    assert done.stdout.rstrip().endswith("✔ No issues found when checking this node. wisp is safe to install or upgrade!")
    assert _host_state() == before


def test_istio_cni_in_the_chain_is_a_conflict(host_root: tuple[Path, Path]) -> None:
    conf, bins = host_root
    chained = dict(BRIDGE, plugins=[*BRIDGE["plugins"], {"type": "istio-cni"}])
    (conf / "10-bridge.conflist").write_text(json.dumps(chained))
    done = precheck("--cni-conf-dir", str(conf), "--cni-bin-dir", str(bins))
    assert done.returncode == 1
    assert "Error [WISP0008] (%s) Istio's CNI plugin is chained here" % (conf / "10-bridge.conflist") in done.stdout


def test_missing_cni_directories_are_errors_naming_them(tmp_path: Path) -> None:
    done = precheck("--cni-conf-dir", str(tmp_path / "none"), "--cni-bin-dir", str(tmp_path / "nobin"))
    assert done.returncode == 1
    assert "Error [WISP0011] (%s) no CNI configuration directory" % (tmp_path / "none") in done.stdout


def test_an_empty_configuration_directory_is_a_warning_only(host_root: tuple[Path, Path]) -> None:
    conf, bins = host_root
    done = precheck("--cni-conf-dir", str(conf), "--cni-bin-dir", str(bins), "-o", "json")
    data = json.loads(done.stdout)
    assert data["target"] == "host"
    assert [m["code"] for m in data["messages"] if m["level"] == "Warning"][:1] == ["WISP0013"]
    assert done.returncode == (1 if data["errors"] else 0)


def test_this_machine_as_it_is(tmp_path: Path) -> None:
    """The real /etc/cni/net.d: this build machine has no CNI installed, which precheck says."""
    done = precheck()
    if not Path("/etc/cni/net.d").is_dir():
        assert done.returncode == 1
        assert "Error [WISP0011] (/etc/cni/net.d) no CNI configuration directory" in done.stdout
    assert "tools present" in done.stdout or "Error [WISP0020]" in done.stdout
