"""The standard CNI chain as a kubelet's container runtime runs it: libcni's conflist semantics.

The runtime gives a pod its network the way containerd does, through the node's CNI network
configuration and plugin binaries (CNI specification 1.0,
https://github.com/containernetworking/cni/blob/main/SPEC.md), and nothing of its own.

Contract:
- `find_conflist(view)` is what libcni loads: the first file by name in the node's
  `/etc/cni/net.d` (`view.cni_conf_dir`) ending in `.conf`, `.conflist` or `.json` that parses
  as a network configuration; a single-plugin `.conf` is read as a list of that one plugin (as
  libcni's ConfListFromConf). A file that does not parse is skipped with a warning, as
  containerd's loader does. None when there is none.
- `cni_add(view, node_netns, container_id=, netns_path=, ifname=, args=)` runs the list's
  plugins in order with CNI_COMMAND=ADD, each given the list's `cniVersion` and `name` and the
  previous plugin's result as `prevResult`, and returns the last result (a CNI 1.0 result:
  `{"ips": [{"address": "10.244.1.10/24", "gateway": ...}], ...}`). The result and the list it
  came from are cached as libcni caches them (`/var/lib/cni/results/<network>-<container
  id>-<ifname>` of the node, `cniCacheV1`). When a plugin fails, the whole list is deleted
  (best effort, as containerd tears a failed sandbox's network down) before the error is raised,
  so a failed ADD leaves no address taken.
- `cni_del(...)` runs the plugins in reverse order with CNI_COMMAND=DEL and the cached result as
  `prevResult`, from the cached list (what ADD ran, even if the node's configuration changed or
  went since) or else the current one. It is more tolerant than libcni, because a pod's
  deletion must finish: a plugin that is not installed is skipped with a warning and every
  other plugin still runs; the first plugin error is raised after all have run; the cache is
  removed only when all succeeded. Nothing cached and no configuration: nothing to do.
- Environment: CNI_COMMAND, CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME, CNI_PATH (`/opt/cni/bin`),
  CNI_ARGS from `args` as `K=V;K=V` with `IgnoreUnknown=1` first (as the kubelet passes it, so
  host-local accepts the K8S_POD_* keys), and PATH.
- Where: each plugin is `<view.cni_bin_dir>/<type>` run as `/opt/cni/bin/<type>` inside the
  node's network namespace (`ip netns exec <node netns>`) and the node's view of node-local
  paths (`sandbox.node_view_sandbox`), so a plugin reads the node's `/var/lib/cni` and a chained
  plugin finds the node agent's socket at its node path (`/var/run/wisp-cni/cni.sock`).
  Processes run with `trio.run_process`, each bounded by `PLUGIN_TIMEOUT`.
- Errors: `CniError(plugin, code, msg, details)`. A plugin's own failure carries the spec's error
  object from its stdout. The runner's own failures use the spec's generic codes: 7 (invalid
  network configuration: no configuration, a plugin type not installed — libcni's `failed to
  find plugin "x" in path [...]`), 6 (a plugin's output is not a result), 5 (the plugin did not
  finish in time, or died without an error object; its stderr is the details).
- `write_primary_conflist(view, node)` is node setup: `10-wisp-bridge.conflist`, Debian's
  containernetworking-plugins bridge on the node's existing `cni0` (isGateway, no masquerade)
  with host-local for the node's /24 from .10, gateway `node.gateway`, a default route, and
  dataDir `/var/lib/cni/networks` (the node's `view.ipam_dir`); and every plugin of
  `/usr/lib/cni` linked into `view.cni_bin_dir`, where the node agent adds wisp-cni. A file that
  already begins with that bridge plugin (wisp-cni chained after it) is left as it is.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import structlog
import trio

from .kube.nodeview import CNI_BIN_DIR, NodeView
from .sandbox import node_view_sandbox
from .topology import Node

log = structlog.get_logger("runtime.cnichain")

CNI_VERSION = "1.0.0"
PRIMARY_CONFLIST = "10-wisp-bridge.conflist"
NETWORK_NAME = "wisp-pods"
DEBIAN_PLUGINS = Path("/usr/lib/cni")
CONF_EXTENSIONS = (".conf", ".conflist", ".json")  # libcni.ConfFiles
PLUGIN_TIMEOUT = 30.0
NODE_IPAM_DATA_DIR = "/var/lib/cni/networks"  # host-local's dataDir, at its node path
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

ERR_IO = 5
ERR_DECODING = 6
ERR_INVALID_CONFIG = 7


class CniError(Exception):
    """A CNI operation failed: which plugin, the spec's error code, its message and details."""

    def __init__(self, plugin: str, code: int, msg: str, details: str = "") -> None:
        self.plugin, self.code, self.msg, self.details = plugin, code, msg, details
        text = f"CNI plugin {plugin}: {msg} (code {code})"
        super().__init__(f"{text}: {details}" if details else text)


# -- node setup ---------------------------------------------------------------------------------
def primary_conflist(node: Node) -> dict[str, Any]:
    """The node's primary network: Debian's bridge on cni0 with host-local for the node's /24."""
    network = node.pod_network
    return {
        "cniVersion": CNI_VERSION,
        "name": NETWORK_NAME,
        "plugins": [{
            "type": "bridge",
            "bridge": "cni0",
            "isGateway": True,
            "ipMasq": False,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": str(network), "rangeStart": str(network.network_address + 10),
                             "gateway": node.gateway}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": NODE_IPAM_DATA_DIR,
            },
        }],
    }


def write_primary_conflist(view: NodeView, node: Node) -> Path:
    """Write the node's primary conflist and link Debian's plugins in; see the module docstring."""
    for directory in (view.cni_conf_dir, view.cni_bin_dir, view.ipam_dir):
        directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    if not DEBIAN_PLUGINS.is_dir():
        raise CniError("bridge", ERR_INVALID_CONFIG, f"the CNI plugins are not installed ({DEBIAN_PLUGINS} is missing)",
                       "install Debian's containernetworking-plugins")
    for plugin in sorted(DEBIAN_PLUGINS.iterdir()):
        link = view.cni_bin_dir / plugin.name
        if link.is_symlink() and os.readlink(link) == str(plugin):
            continue
        temporary = view.cni_bin_dir / f".{plugin.name}.wisp-link"
        temporary.unlink(missing_ok=True)
        temporary.symlink_to(plugin)
        os.replace(temporary, link)
    wanted = primary_conflist(node)
    path = view.cni_conf_dir / PRIMARY_CONFLIST
    try:
        current = json.loads(path.read_bytes())
        if current.get("name") == wanted["name"] and (current.get("plugins") or [None])[0] == wanted["plugins"][0]:
            return path  # ours already, perhaps with the node agent's wisp-cni chained after it
    except (OSError, ValueError, AttributeError):
        pass
    _write_atomic(path, (json.dumps(wanted, indent=2) + "\n").encode())
    log.info("primary CNI network written", conflist=str(path), subnet=str(node.pod_network))
    return path


def _write_atomic(path: Path, data: bytes) -> None:
    # A temporary name with no CNI extension, so a runtime listing the directory never reads it.
    fd, temporary = tempfile.mkstemp(prefix=".wisp-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


# -- loading --------------------------------------------------------------------------------------
def parse_conflist(data: bytes, name: str) -> dict[str, Any]:
    """A network configuration file as a conflist; ValueError naming what is wrong."""
    document = json.loads(data)
    if not isinstance(document, dict):
        raise ValueError(f"{name} is not a JSON object")
    if "plugins" in document:
        plugins = document["plugins"]
        if not isinstance(plugins, list) or not plugins:
            raise ValueError(f"{name}: `plugins` must be a non-empty list")
        conflist = document
    elif isinstance(document.get("type"), str):
        conflist = {"cniVersion": document.get("cniVersion"), "name": document.get("name"), "plugins": [document]}
    else:
        raise ValueError(f"{name} has neither `plugins` nor `type`")
    for index, plugin in enumerate(conflist["plugins"]):
        if not isinstance(plugin, dict) or not isinstance(plugin.get("type"), str) or not plugin["type"]:
            raise ValueError(f"{name}: plugins[{index}] has no `type`")
    if not isinstance(conflist.get("name"), str) or not conflist["name"]:
        raise ValueError(f"{name}: the network has no `name`")
    if not isinstance(conflist.get("cniVersion"), str) or not conflist["cniVersion"]:
        raise ValueError(f"{name}: the network has no `cniVersion`")
    return conflist


def find_conflist(view: NodeView) -> dict[str, Any] | None:
    """The network libcni would load from the node's configuration directory, or None."""
    try:
        names = sorted(entry.name for entry in os.scandir(view.cni_conf_dir)
                       if entry.is_file() and entry.name.endswith(CONF_EXTENSIONS))
    except OSError:
        return None
    for name in names:
        path = view.cni_conf_dir / name
        try:
            return parse_conflist(path.read_bytes(), str(path))
        except (OSError, ValueError) as exc:
            log.warning("CNI configuration skipped", file=str(path), error=str(exc))
    return None


# -- running ------------------------------------------------------------------------------------
def cni_args(args: dict[str, str]) -> str:
    """CNI_ARGS with IgnoreUnknown=1 first; ValueError for a key or value that cannot be said."""
    items = {"IgnoreUnknown": "1", **args}
    for key, value in items.items():
        if not key or any(c in key for c in "=;") or ";" in value:
            raise ValueError(f"CNI_ARGS cannot carry {key!r}={value!r}")
    return ";".join(f"{key}={value}" for key, value in items.items())


def _plugin_config(conflist: dict[str, Any], plugin: dict[str, Any], prev: dict[str, Any] | None) -> bytes:
    config = {**plugin, "cniVersion": conflist["cniVersion"], "name": conflist["name"]}
    config.pop("prevResult", None)
    if prev is not None:
        config["prevResult"] = prev
    return json.dumps(config).encode()


class _Runner:
    """One ADD or DEL of one container: where plugins are and how they are started."""

    def __init__(self, view: NodeView, node_netns: str, *, container_id: str, netns_path: str, ifname: str,
                 args: dict[str, str]) -> None:
        if not container_id or not netns_path or not ifname:
            raise ValueError("a CNI call needs a container id, a netns path and an interface name")
        self.view = view
        self.node_netns = node_netns
        self.container_id, self.netns_path, self.ifname = container_id, netns_path, ifname
        self.args = cni_args(args)
        self.sandbox = node_view_sandbox(view)

    def installed(self, plugin_type: str) -> bool:
        return "/" not in plugin_type and plugin_type not in (".", "..") and (self.view.cni_bin_dir / plugin_type).exists()

    async def invoke(self, command: str, plugin_type: str, config: bytes) -> dict[str, Any] | None:
        if not self.installed(plugin_type):
            raise CniError(plugin_type, ERR_INVALID_CONFIG,
                           f'failed to find plugin "{plugin_type}" in path [{CNI_BIN_DIR}]',
                           f"the node's plugin directory is {self.view.cni_bin_dir}")
        argv = ["ip", "netns", "exec", self.node_netns, *self.sandbox.wrap([f"{CNI_BIN_DIR}/{plugin_type}"])]
        env = {"PATH": os.environ.get("PATH", DEFAULT_PATH), "CNI_COMMAND": command,
               "CNI_CONTAINERID": self.container_id, "CNI_NETNS": self.netns_path, "CNI_IFNAME": self.ifname,
               "CNI_ARGS": self.args, "CNI_PATH": CNI_BIN_DIR}
        try:
            with trio.fail_after(PLUGIN_TIMEOUT):
                done = await trio.run_process(argv, stdin=config, capture_stdout=True, capture_stderr=True,
                                              check=False, env=env)
        except trio.TooSlowError:
            raise CniError(plugin_type, ERR_IO, f"{command} did not finish within {PLUGIN_TIMEOUT:g} s") from None
        except OSError as exc:
            raise CniError(plugin_type, ERR_IO, f"cannot run {command}: {exc}") from None
        stdout = done.stdout.decode(errors="replace").strip()
        stderr = done.stderr.decode(errors="replace").strip()
        if done.returncode != 0:
            try:
                error = json.loads(stdout)
                code, msg = int(error["code"]), str(error["msg"])
            except (ValueError, KeyError, TypeError):
                raise CniError(plugin_type, ERR_IO, f"{command} failed with exit status {done.returncode} "
                               "and no CNI error", (stderr or stdout)[-2000:]) from None
            raise CniError(plugin_type, code, msg, str(error.get("details") or ""))
        if command != "ADD":
            return None
        try:
            result = json.loads(stdout)
            if not isinstance(result, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            raise CniError(plugin_type, ERR_DECODING, f"ADD returned no result ({exc})", stdout[-2000:]) from None
        return result

    # libcni's result cache, at the node's /var/lib/cni/results.
    def cache_path(self, network: str) -> Path:
        return self.view.ipam_dir / "results" / f"{network}-{self.container_id}-{self.ifname}"

    def cached(self) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """(conflist, result) cached by the ADD of this container and interface, in any network."""
        directory = self.view.ipam_dir / "results"
        suffix = f"-{self.container_id}-{self.ifname}"
        try:
            names = sorted(n for n in os.listdir(directory) if n.endswith(suffix))
        except OSError:
            return None, None
        for name in names:
            try:
                entry = json.loads((directory / name).read_bytes())
                conflist = parse_conflist(base64.b64decode(entry["config"]), str(directory / name))
                return conflist, entry.get("result")
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("CNI result cache unreadable", file=str(directory / name), error=str(exc))
        return None, None

    def cache(self, conflist: dict[str, Any], result: dict[str, Any]) -> None:
        path = self.cache_path(conflist["name"])
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        entry = {"kind": "cniCacheV1", "containerId": self.container_id,
                 "config": base64.b64encode(json.dumps(conflist).encode()).decode(),
                 "ifName": self.ifname, "networkName": conflist["name"],
                 "cniArgs": [item.split("=", 1) for item in self.args.split(";")], "result": result}
        _write_atomic(path, json.dumps(entry).encode())

    async def delete(self, conflist: dict[str, Any], prev: dict[str, Any] | None) -> None:
        first: CniError | None = None
        for plugin in reversed(conflist["plugins"]):
            if not self.installed(plugin["type"]):
                log.warning("CNI plugin not installed; DEL skips it", plugin=plugin["type"],
                            container=self.container_id)
                continue
            try:
                await self.invoke("DEL", plugin["type"], _plugin_config(conflist, plugin, prev))
            except CniError as exc:
                first = first or exc
        if first is not None:
            raise first
        self.cache_path(conflist["name"]).unlink(missing_ok=True)


async def cni_add(view: NodeView, node_netns: str, *, container_id: str, netns_path: str, ifname: str = "eth0",
                  args: dict[str, str]) -> dict[str, Any]:
    """ADD the container to the node's network; the final CNI result. See the module docstring."""
    runner = _Runner(view, node_netns, container_id=container_id, netns_path=netns_path, ifname=ifname, args=args)
    conflist = find_conflist(view)
    if conflist is None:
        raise CniError("(none)", ERR_INVALID_CONFIG, f"no CNI network configuration in {view.cni_conf_dir}",
                       "the node's network is not set up")
    prev: dict[str, Any] | None = None
    try:
        for plugin in conflist["plugins"]:
            prev = await runner.invoke("ADD", plugin["type"], _plugin_config(conflist, plugin, prev))
    except CniError as exc:
        log.warning("CNI ADD failed; deleting what it did", container=container_id, plugin=exc.plugin, error=exc.msg)
        with trio.CancelScope(shield=True):
            try:
                await runner.delete(conflist, prev)
            except CniError as cleanup:
                log.warning("CNI DEL after a failed ADD failed too", container=container_id, error=str(cleanup))
        raise
    assert prev is not None  # a conflist has at least one plugin
    runner.cache(conflist, prev)
    log.info("CNI ADD", container=container_id, network=conflist["name"],
             ips=[ip.get("address") for ip in prev.get("ips") or [] if isinstance(ip, dict)])
    return prev


async def cni_del(view: NodeView, node_netns: str, *, container_id: str, netns_path: str, ifname: str = "eth0",
                  args: dict[str, str]) -> None:
    """DEL the container from the network its ADD used; see the module docstring."""
    runner = _Runner(view, node_netns, container_id=container_id, netns_path=netns_path, ifname=ifname, args=args)
    conflist, result = runner.cached()
    if conflist is None:
        conflist = find_conflist(view)
    if conflist is None:
        log.warning("CNI DEL with no network configuration and nothing cached", container=container_id)
        return
    await runner.delete(conflist, result)
