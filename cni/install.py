"""Install wisp's CNI plugin on a node, chained after the primary network plugin, and remove it.

Contract:
- `install(paths, agent_socket)` writes the plugin launcher `<bin_dir>/wisp-cni` and appends
  `{"type": "wisp-cni", "agent_socket": ...}` to the `plugins` of the primary network
  configuration in `<conf_dir>`: the file a container runtime would use, i.e. the first
  `.conf`/`.conflist`/`.json` by name (libcni's order, as kubelet/containerd/CRI-O read it), or
  `paths.conf_name` when given. A single-plugin `.conf` becomes a `.conflist` (name and
  cniVersion lifted, the original object kept as the first plugin, as libcni's ConfListFromConf
  does) and the `.conf` is removed. Installing again is a no-op; an entry with other settings is
  replaced.
- Before anything is written the original file's bytes and name are kept aside in
  `<conf_dir>/.wisp-cni-install.state` (an extension no runtime reads), so `uninstall(paths)`
  restores the original file byte for byte and removes the launcher. If the configuration was
  changed by someone else since wisp wrote it, uninstall removes only wisp's entry (as Istio's
  install-cni does) and keeps the rest of their change.
- Bad input — no configuration file, one that is not JSON, not a network configuration, a
  `cniVersion` wisp-cni does not speak, a directory that cannot be written — raises
  `InstallError` naming the file and the problem, with nothing changed. Every file is replaced
  by a rename, so a runtime never reads half a file.

The launcher is a shell script that runs `wisp-cni` with the interpreter given (default: this
one); a runtime executes it from `bin_dir` by the plugin `type`. On a real node the host must
be able to run that interpreter with wisp installed (see docs/cni.md).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import shlex
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from .errors import CniAgentError
from .plugin import SUPPORTED_VERSIONS

log = structlog.get_logger("cni.install")

DEFAULT_CONF_DIR = "/etc/cni/net.d"
DEFAULT_BIN_DIR = "/opt/cni/bin"
PLUGIN_TYPE = "wisp-cni"
STATE_FILE = ".wisp-cni-install.state"
CONF_EXTENSIONS = (".conf", ".conflist", ".json")  # what libcni.ConfFiles lists
LAUNCHER_MARK = "# wisp-cni launcher written by cni/install.py"


class InstallError(CniAgentError):
    """The host CNI configuration cannot take wisp's entry (or give it back); nothing was changed."""


@dataclass(frozen=True, slots=True)
class HostPaths:
    conf_dir: str = DEFAULT_CONF_DIR
    bin_dir: str = DEFAULT_BIN_DIR
    conf_name: str | None = None  # the primary file by name; None: the runtime's choice


@dataclass(frozen=True, slots=True)
class Installed:
    conflist: str  # the file that now holds the chain
    launcher: str
    changed: bool  # False: everything was already in place


# -- pure: configuration documents ----------------------------------------------------------------
def wisp_entry(agent_socket: str) -> dict[str, Any]:
    return {"type": PLUGIN_TYPE, "agent_socket": agent_socket}


def parse_network(data: bytes, name: str) -> tuple[dict[str, Any], bool]:
    """The configuration as a conflist object, and whether the file was a single-plugin conf."""
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InstallError(f"{name} is not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise InstallError(f"{name} is not a CNI network configuration (not a JSON object)")
    if "plugins" in document:
        plugins = document["plugins"]
        if not isinstance(plugins, list) or not plugins:
            raise InstallError(f"{name}: `plugins` must be a non-empty list")
        for index, plugin in enumerate(plugins):
            if not isinstance(plugin, dict) or not isinstance(plugin.get("type"), str) or not plugin["type"]:
                raise InstallError(f"{name}: plugins[{index}] has no `type`")
        conflist, single = document, False
    elif isinstance(document.get("type"), str) and document["type"]:
        conflist = {"cniVersion": document.get("cniVersion"), "name": document.get("name"), "plugins": [document]}
        single = True
    else:
        raise InstallError(f"{name} is not a CNI network configuration (neither `plugins` nor `type`)")
    if not isinstance(conflist.get("name"), str) or not conflist["name"]:
        raise InstallError(f"{name}: the network has no `name`")
    version = conflist.get("cniVersion")
    if version not in SUPPORTED_VERSIONS:
        raise InstallError(f"{name}: cniVersion {version!r} is not one wisp-cni speaks "
                           f"({', '.join(SUPPORTED_VERSIONS)})")
    return conflist, single


def chained(conflist: dict[str, Any], agent_socket: str) -> dict[str, Any]:
    """The conflist with wisp's entry last (an existing wisp entry replaced, others kept in order)."""
    plugins = [p for p in conflist["plugins"] if p.get("type") != PLUGIN_TYPE]
    if not plugins:
        raise InstallError(f"network {conflist.get('name')!r} has no primary plugin to chain after")
    return {**conflist, "plugins": [*plugins, wisp_entry(agent_socket)]}


def unchained(conflist: dict[str, Any]) -> dict[str, Any]:
    return {**conflist, "plugins": [p for p in conflist["plugins"] if p.get("type") != PLUGIN_TYPE]}


def has_entry(conflist: dict[str, Any]) -> bool:
    return any(p.get("type") == PLUGIN_TYPE for p in conflist["plugins"])


def render(conflist: dict[str, Any]) -> bytes:
    return (json.dumps(conflist, indent=2) + "\n").encode()


def launcher_script(command: list[str]) -> str:
    return f"#!/bin/sh\n{LAUNCHER_MARK}; removed on uninstall.\nexec {shlex.join(command)} \"$@\"\n"


def default_plugin_command() -> list[str]:
    """This interpreter running `cni.plugin` from where this package is, installed or not.

    The package's parent goes at the end of sys.path and `-P` keeps the runtime's working
    directory off it: the source tree's `operator/` must never shadow the standard library's.
    """
    parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = f"import sys; sys.path.append({parent!r}); from cni.plugin import main; main()"
    return [sys.executable, "-P", "-c", code]


# -- files ------------------------------------------------------------------------------------------
def primary_file(paths: HostPaths) -> Path:
    """The configuration file a runtime would use (or `paths.conf_name`)."""
    directory = Path(paths.conf_dir)
    if paths.conf_name:
        chosen = directory / paths.conf_name
        if not chosen.is_file():
            raise InstallError(f"CNI configuration {chosen} does not exist")
        return chosen
    try:
        names = sorted(entry.name for entry in os.scandir(directory)
                       if entry.is_file() and entry.name.endswith(CONF_EXTENSIONS))
    except OSError as exc:
        raise InstallError(f"cannot read the CNI configuration directory {directory}: {exc}") from None
    if not names:
        raise InstallError(f"no CNI network configuration in {directory} (.conf, .conflist or .json): "
                           "install the primary network plugin first, wisp-cni chains after it")
    return directory / names[0]


def _write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    # A temporary name with no CNI extension, so a runtime listing the directory never reads it.
    fd, temporary = tempfile.mkstemp(prefix=".wisp-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


@dataclass(frozen=True, slots=True)
class _State:
    original_name: str
    original: bytes
    original_mode: int
    written_name: str
    written_sha256: str

    def dump(self) -> bytes:
        return (json.dumps({"version": 1, "original_name": self.original_name,
                            "original": base64.b64encode(self.original).decode(),
                            "original_mode": self.original_mode, "written_name": self.written_name,
                            "written_sha256": self.written_sha256}, indent=2) + "\n").encode()

    @classmethod
    def load(cls, path: Path) -> _State | None:
        try:
            data = json.loads(path.read_bytes())
            return cls(str(data["original_name"]), base64.b64decode(data["original"]),
                       int(data.get("original_mode", 0o644)), str(data["written_name"]),
                       str(data["written_sha256"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InstallError(f"wisp's install record {path} is unreadable ({exc}); remove it and "
                               "check the CNI configuration by hand") from None


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def install(paths: HostPaths, agent_socket: str, plugin_command: list[str] | None = None) -> Installed:
    """Put the launcher and the chained entry in place; see the module docstring."""
    if not agent_socket:
        raise InstallError("the node agent's socket path is empty")
    conf_dir, bin_dir = Path(paths.conf_dir), Path(paths.bin_dir)
    if not bin_dir.is_dir():
        raise InstallError(f"CNI binary directory {bin_dir} does not exist")
    state_path = conf_dir / STATE_FILE
    state = _State.load(state_path)
    if state is not None and (conf_dir / state.written_name).is_file() and not paths.conf_name:
        source = conf_dir / state.written_name  # ours already: do not let another file win now
    else:
        source = primary_file(paths)
    try:
        data = source.read_bytes()
        mode = source.stat().st_mode & 0o777
    except OSError as exc:
        raise InstallError(f"cannot read {source}: {exc}") from None
    conflist, single = parse_network(data, str(source))
    target = source.with_suffix(".conflist") if single else source
    if single and target.exists():
        raise InstallError(f"{source} is a single-plugin configuration but {target} exists too; "
                           "remove one of them")
    new = render(chained(conflist, agent_socket))

    if state is not None and state.written_name == source.name and state.written_sha256 == _sha(data):
        original_name, original, original_mode = state.original_name, state.original, state.original_mode
    elif state is not None and has_entry(conflist):
        # Someone edited the chain we wrote: what they left, minus our entry, is the original now.
        original_name, original, original_mode = source.name, render(unchained(conflist)), mode
    else:
        original_name, original, original_mode = source.name, data, mode

    launcher = bin_dir / PLUGIN_TYPE
    script = launcher_script(plugin_command or default_plugin_command()).encode()
    try:
        current_script = launcher.read_bytes() if launcher.exists() else None
    except OSError:
        current_script = None
    if new == data and current_script == script and state is not None:
        return Installed(str(target), str(launcher), changed=False)

    record = _State(original_name, original, original_mode, target.name, _sha(new))
    previous_state = state_path.read_bytes() if state is not None else None
    steps = 0
    try:
        _write_atomic(launcher, script, 0o755)
        steps = 1
        _write_atomic(state_path, record.dump(), 0o600)
        steps = 2
        _write_atomic(target, new, mode)
        if target != source:
            source.unlink()
    except OSError as exc:
        _roll_back(steps, launcher, current_script, state_path, previous_state)
        raise InstallError(f"cannot write the CNI configuration in {conf_dir} or {bin_dir}: {exc}") from None
    log.info("wisp-cni installed", conflist=str(target), after=[p["type"] for p in conflist["plugins"]
                                                                if p.get("type") != PLUGIN_TYPE],
             launcher=str(launcher))
    return Installed(str(target), str(launcher), changed=True)


def _roll_back(steps: int, launcher: Path, script: bytes | None, state_path: Path, state: bytes | None) -> None:
    """Undo the writes of a failed install, so a failure leaves the host as it was."""
    undo: list[tuple[Path, bytes | None, int]] = [(launcher, script, 0o755), (state_path, state, 0o600)]
    for path, data, mode in undo[:steps]:
        try:
            if data is None:
                path.unlink(missing_ok=True)
            else:
                _write_atomic(path, data, mode)
        except OSError as exc:
            log.error("cannot undo a failed CNI install step", path=str(path), error=str(exc))


def uninstall(paths: HostPaths) -> bool:
    """Take wisp's entry and launcher out; True if anything was removed."""
    conf_dir, bin_dir = Path(paths.conf_dir), Path(paths.bin_dir)
    state_path = conf_dir / STATE_FILE
    state = _State.load(state_path)
    changed = False
    try:
        if state is not None:
            written = conf_dir / state.written_name
            current = written.read_bytes() if written.is_file() else None
            if current is not None and _sha(current) == state.written_sha256:
                original = conf_dir / state.original_name
                _write_atomic(original, state.original, state.original_mode)
                if written != original:
                    written.unlink()
                log.info("original CNI configuration restored", conflist=str(original))
                changed = True
            elif current is not None:
                changed = _remove_entry(written, current) or changed
            state_path.unlink()
        else:
            for entry in sorted(os.scandir(conf_dir), key=lambda e: e.name) if conf_dir.is_dir() else []:
                if entry.is_file() and entry.name.endswith(CONF_EXTENSIONS):
                    path = Path(entry.path)
                    changed = _remove_entry(path, path.read_bytes()) or changed
        launcher = bin_dir / PLUGIN_TYPE
        if launcher.is_file() and LAUNCHER_MARK.encode() in launcher.read_bytes()[:200]:
            launcher.unlink()
            changed = True
    except OSError as exc:
        raise InstallError(f"cannot remove wisp-cni from {conf_dir} or {bin_dir}: {exc}") from None
    return changed


def _remove_entry(path: Path, data: bytes) -> bool:
    """Drop wisp's entry from a file changed by someone else; unparseable files are left alone."""
    try:
        conflist, _ = parse_network(data, str(path))
    except InstallError:
        return False
    if not has_entry(conflist):
        return False
    _write_atomic(path, render(unchained(conflist)), path.stat().st_mode & 0o777)
    log.warning("CNI configuration changed since wisp wrote it; removed only wisp's entry", conflist=str(path))
    return True


# -- command line -------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cni.install",
                                     description="install or remove wisp's chained CNI plugin on this host")
    parser.add_argument("action", choices=("install", "uninstall"))
    parser.add_argument("--conf-dir", default=DEFAULT_CONF_DIR)
    parser.add_argument("--bin-dir", default=DEFAULT_BIN_DIR)
    parser.add_argument("--conf-name", help="the primary configuration file (default: the runtime's choice)")
    parser.add_argument("--agent-socket", help="the node agent's CNI socket (install)")
    args = parser.parse_args(argv)
    paths = HostPaths(args.conf_dir, args.bin_dir, args.conf_name)
    try:
        if args.action == "install":
            if not args.agent_socket:
                parser.error("install needs --agent-socket")
            done = install(paths, args.agent_socket)
            print(f"wisp-cni chained in {done.conflist}" + ("" if done.changed else " (already)"))
        else:
            print("wisp-cni removed" if uninstall(paths) else "wisp-cni was not installed")
    except InstallError as exc:
        sys.exit(f"wisp-cni install: {exc}")


if __name__ == "__main__":
    main()
