"""A pod's volumes as a kubelet materialises them: directories on the machine, bound into its sandbox.

Contract:
- `PodVolumes(api, pod, view, pod_dir, uid, gid)` owns `<pod_dir>/volumes/<volume name>`.
  `prepare()` materialises every volume of `pod.spec.volumes`; a volume that cannot be made
  raises `VolumeError` naming the volume and the reason (a missing non-optional ConfigMap or
  Secret, a missing key, a bad path, an unsupported type), which the kubelet reports and retries.
- Kinds:
  - `emptyDir`: a directory owned by `uid` and the pod's group (`securityContext.fsGroup`, else
    `gid`), mode 0777 as Kubernetes makes it (with the set-group-id bit under fsGroup). `medium:
    Memory` is a directory too (the run directory is already in memory); `sizeLimit` is not
    enforced.
  - `configMap`, `secret`: every key (or only `items`, each at its `path` with its `mode`),
    `defaultMode` (default 0644); `optional: true` gives an empty volume when the object or key
    is missing.
  - `downwardAPI`: `items` with `fieldRef` (metadata.name/namespace/uid, metadata.labels and
    annotations, one of them by key as `metadata.labels['k']`, spec.nodeName,
    spec.serviceAccountName), in the kubelet's formats (labels as `k="v"` lines, sorted).
  - `projected`: `serviceAccountToken` (TokenRequest for the pod's service account with the
    `audience` and `expirationSeconds` asked (default 3600), bound to the pod, via
    `KubeApi.create_token`), `configMap`, `secret` and `downwardAPI` sources in one directory.
    The `kube-api-access-*` volume the API server's admission adds is such a volume.
  - `hostPath`: `view.host_path(path)` (the node's copy, or the machine's for /proc, /sys, /dev,
    /run/netns); `DirectoryOrCreate` and `FileOrCreate` create it (parents included) under the
    node's directory, never under a machine path; `Directory`, `File`, `Socket`, `CharDevice`,
    `BlockDevice` check it exists as that; with no type it must exist (nothing is created), so a
    missing path is a VolumeError here rather than a failed bind in the sandbox.
  Anything else (persistentVolumeClaim, csi, …) is a VolumeError naming the supported kinds.
- Files are written as the kubelet's AtomicWriter writes them: a fresh `..<timestamp>` directory,
  the `..data` link switched to it with a rename, and per-entry links `<name> -> ..data/<name>`,
  so a reader never sees half an update. Files belong to `uid` and the pod's group with the mode
  asked. A volume whose content has not changed is not rewritten.
- `mounts(container)` is the container's `volumeMounts` as `Sandbox.binds` entries: (machine
  path, mountPath, read_only). `readOnly` is honoured; configMap, secret, downwardAPI and
  projected volumes are always read-only (as Kubernetes mounts them); `subPath` binds that entry
  of the volume (created as a directory in an emptyDir or hostPath when missing; it may not leave
  the volume, links included). A mount naming no volume of the pod is a VolumeError.
  `subPathExpr` is refused with a VolumeError.
- `refresh_forever()` rewrites a volume holding a token once 80% of the token's life has passed
  or it is a day old, whichever is first (as the kubelet's token manager),
  and every volume from the API every `resync` seconds (ConfigMap and Secret changes); a failed
  refresh is logged and retried after `RETRY_SECONDS`, never raised.
- `cleanup()` removes `<pod_dir>/volumes` (a hostPath is the node's and stays), and `pod_dir`
  when nothing else is left in it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
import trio

from .api import ApiError, KubeApi
from .nodeview import MACHINE_PATHS, NodeView

log = structlog.get_logger("runtime.kube.volumes")

DEFAULT_MODE = 0o644
DEFAULT_TOKEN_SECONDS = 3600
REFRESH_FRACTION = 0.8
# The kubelet's token manager renews a token a day old whatever its expiry: the API server makes
# the admission's kube-api-access token (3607 s asked) last a year to warn on stale clients
# (--service-account-extend-token-expiration, on by default), and 80% of a year is never.
MAX_TOKEN_AGE = 24 * 3600.0
RESYNC_SECONDS = 60.0
RETRY_SECONDS = 5.0
ATOMIC_KINDS = ("configMap", "secret", "downwardAPI", "projected")
SUPPORTED = ("emptyDir", *ATOMIC_KINDS, "hostPath")
DATA_LINK = "..data"
_FIELD_BY_KEY = re.compile(r"^metadata\.(labels|annotations)\['([^']+)'\]$")


class VolumeError(RuntimeError):
    """A volume cannot be materialised or mounted; the message names the volume and why."""


@dataclass(slots=True, frozen=True)
class _File:
    data: bytes
    mode: int


@dataclass(slots=True)
class _Content:
    files: dict[str, _File]
    refresh_at: float | None  # when the earliest token in it is due for renewal


class PodVolumes:
    def __init__(self, api: KubeApi, pod: dict[str, Any], view: NodeView, pod_dir: Path, uid: int, gid: int,
                 *, resync: float = RESYNC_SECONDS) -> None:
        self.api = api
        self.pod = pod
        self.view = view
        self.pod_dir = Path(pod_dir)
        self.root = self.pod_dir / "volumes"
        self.uid = uid
        meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
        self.namespace = str(meta.get("namespace") or "default")
        self.pod_name = str(meta.get("name") or "")
        fs_group = (spec.get("securityContext") or {}).get("fsGroup")
        self.fs_group = fs_group if isinstance(fs_group, int) and not isinstance(fs_group, bool) else None
        self.group = self.fs_group if self.fs_group is not None else gid
        self.resync = resync
        self.clock: Callable[[], float] = time.time  # wall clock: token expiry is a wall-clock time
        self.volumes: dict[str, dict[str, Any]] = {}
        self.paths: dict[str, Path] = {}
        self.kinds: dict[str, str] = {}
        self.refresh_at: dict[str, float] = {}
        self._digests: dict[str, str] = {}
        self._tokens: dict[tuple[str, str], tuple[_File, float]] = {}  # (volume, path) → token, renewal time
        for volume in spec.get("volumes") or []:
            name = volume.get("name") if isinstance(volume, dict) else None
            if isinstance(name, str) and name:
                self.volumes[name] = volume

    # -- preparing ------------------------------------------------------------------------------
    async def prepare(self) -> None:
        """Materialise every volume of the pod (see the module docstring)."""
        self.root.mkdir(mode=0o755, parents=True, exist_ok=True)
        for name, volume in self.volumes.items():
            kind = _kind(name, volume)
            self.kinds[name] = kind
            if kind == "emptyDir":
                self.paths[name] = self._empty_dir(name)
            elif kind == "hostPath":
                self.paths[name] = self._host_path(name, volume["hostPath"] or {})
            else:
                await self._write(name, volume, kind)

    def _empty_dir(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(exist_ok=True)
        os.chown(path, self.uid, self.group)
        os.chmod(path, 0o2777 if self.fs_group is not None else 0o777)
        return path

    def _host_path(self, name: str, source: dict[str, Any]) -> Path:
        asked = source.get("path")
        if not isinstance(asked, str) or not asked.startswith("/"):
            raise VolumeError(f"volume {name}: hostPath.path {asked!r} is not an absolute path")
        path = self.view.host_path(asked)
        kind = source.get("type") or ""
        on_machine = any(str(path) == p or str(path).startswith(p + "/") for p in MACHINE_PATHS)
        if kind in ("DirectoryOrCreate", "FileOrCreate") and not path.exists():
            if on_machine:
                raise VolumeError(f"volume {name}: hostPath {asked} does not exist and is the machine's, "
                                  "not the node's: the runtime creates nothing there")
            try:
                if kind == "DirectoryOrCreate":
                    path.mkdir(mode=0o755, parents=True, exist_ok=True)
                else:
                    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
                    path.touch(mode=0o644, exist_ok=True)
            except OSError as exc:
                raise VolumeError(f"volume {name}: cannot create hostPath {asked} at {path}: {exc}") from None
        checks: dict[str, Callable[[int], bool]] = {
            "DirectoryOrCreate": stat.S_ISDIR, "Directory": stat.S_ISDIR, "FileOrCreate": stat.S_ISREG,
            "File": stat.S_ISREG, "Socket": stat.S_ISSOCK, "CharDevice": stat.S_ISCHR, "BlockDevice": stat.S_ISBLK,
        }
        if kind and kind not in checks:
            raise VolumeError(f"volume {name}: hostPath type {kind!r} is not one of {', '.join(checks)}")
        try:
            mode = path.stat().st_mode
        except OSError:
            raise VolumeError(f"volume {name}: hostPath {asked} does not exist on the node "
                              f"(looked at {path})") from None
        if kind:
            if not checks[kind](mode):
                raise VolumeError(f"volume {name}: hostPath {asked} is not a {kind.removesuffix('OrCreate')}")
        return path

    async def _write(self, name: str, volume: dict[str, Any], kind: str) -> None:
        content = await self._content(name, kind, volume[kind] or {})
        digest = hashlib.sha256(json.dumps({p: [f.data.hex(), f.mode] for p, f in sorted(content.files.items())})
                                .encode()).hexdigest()
        path = self.root / name
        if self._digests.get(name) != digest or not (path / DATA_LINK).exists():
            await trio.to_thread.run_sync(write_atomic, path, content.files, self.uid, self.group)
            self._digests[name] = digest
        self.paths[name] = path
        if content.refresh_at is not None:
            self.refresh_at[name] = content.refresh_at
        else:
            self.refresh_at.pop(name, None)

    async def _content(self, name: str, kind: str, source: dict[str, Any]) -> _Content:
        default = _mode(name, source.get("defaultMode"), DEFAULT_MODE)
        files: dict[str, _File] = {}
        refresh_at: float | None = None
        if kind == "configMap":
            self._add(name, files, await self._object_files(name, "configmaps", source.get("name"), source, default))
        elif kind == "secret":
            self._add(name, files, await self._object_files(name, "secrets", source.get("secretName"), source, default))
        elif kind == "downwardAPI":
            self._add(name, files, self._downward(name, source.get("items") or [], default))
        else:
            for index, projection in enumerate(source.get("sources") or []):
                if not isinstance(projection, dict):
                    raise VolumeError(f"volume {name}: sources[{index}] is not an object")
                if "serviceAccountToken" in projection:
                    path, token, due = await self._token(name, projection["serviceAccountToken"] or {}, default)
                    self._add(name, files, {path: token})
                    refresh_at = due if refresh_at is None else min(refresh_at, due)
                elif "configMap" in projection:
                    cm = projection["configMap"] or {}
                    self._add(name, files, await self._object_files(name, "configmaps", cm.get("name"), cm, default))
                elif "secret" in projection:
                    secret = projection["secret"] or {}
                    self._add(name, files, await self._object_files(name, "secrets", secret.get("name"), secret, default))
                elif "downwardAPI" in projection:
                    self._add(name, files, self._downward(name, (projection["downwardAPI"] or {}).get("items") or [],
                                                          default))
                else:
                    raise VolumeError(f"volume {name}: projected source {sorted(projection)} is not supported "
                                      "(serviceAccountToken, configMap, secret, downwardAPI are)")
        return _Content(files, refresh_at)

    @staticmethod
    def _add(name: str, files: dict[str, _File], more: dict[str, _File]) -> None:
        for path, file in more.items():
            if path in files:
                raise VolumeError(f"volume {name}: two sources write {path}")
            files[path] = file

    async def _object_files(self, name: str, resource: str, object_name: Any, source: dict[str, Any],
                            default: int) -> dict[str, _File]:
        what = "configmap" if resource == "configmaps" else "secret"
        if not isinstance(object_name, str) or not object_name:
            raise VolumeError(f"volume {name}: the {what} has no name")
        optional = bool(source.get("optional"))
        try:
            obj = await self.api.get(f"/api/v1/namespaces/{self.namespace}/{resource}/{object_name}", missing_ok=True)
        except ApiError as exc:
            raise VolumeError(f"volume {name}: cannot read {what} {self.namespace}/{object_name}: {exc}") from None
        if obj is None:
            if optional:
                return {}
            raise VolumeError(f'volume {name}: {what} "{object_name}" not found in namespace {self.namespace}')
        data: dict[str, bytes] = {}
        if resource == "configmaps":
            data.update({k: str(v).encode() for k, v in (obj.get("data") or {}).items()})
            data.update({k: _b64(name, k, v) for k, v in (obj.get("binaryData") or {}).items()})
        else:
            data.update({k: _b64(name, k, v) for k, v in (obj.get("data") or {}).items()})
        items = source.get("items")
        if not items:
            return {_relative(name, key): _File(value, default) for key, value in data.items()}
        files: dict[str, _File] = {}
        for item in items:
            key = item.get("key") if isinstance(item, dict) else None
            if key not in data:
                if optional:
                    continue
                raise VolumeError(f'volume {name}: {what} "{object_name}" has no key {key!r}')
            files[_relative(name, item.get("path") or key)] = _File(data[key], _mode(name, item.get("mode"), default))
        return files

    async def _token(self, name: str, source: dict[str, Any], default: int) -> tuple[str, _File, float]:
        seconds = source.get("expirationSeconds", DEFAULT_TOKEN_SECONDS)
        if not isinstance(seconds, int) or seconds < 600:
            raise VolumeError(f"volume {name}: expirationSeconds {seconds!r} must be at least 600")
        audience = source.get("audience")
        account = (self.pod.get("spec") or {}).get("serviceAccountName") or "default"
        path = _relative(name, source.get("path") or "token")
        issued = self.clock()
        held = self._tokens.get((name, path))
        if held is not None and issued < held[1]:
            return path, held[0], held[1]  # a resync, not a renewal: the token is still good
        try:
            token, expires = await self.api.create_token(self.namespace, account, audiences=[audience] if audience else None,
                                                         seconds=seconds, pod=self.pod)
        except ApiError as exc:
            raise VolumeError(f"volume {name}: cannot get a token for service account "
                              f"{self.namespace}/{account}: {exc}") from None
        if not token:
            raise VolumeError(f"volume {name}: the API server returned an empty token")
        due = renewal_time(issued, expires)
        self._tokens[(name, path)] = (_File(token.encode(), default), due)
        return path, _File(token.encode(), default), due

    def _downward(self, name: str, items: list[Any], default: int) -> dict[str, _File]:
        files: dict[str, _File] = {}
        for item in items:
            if not isinstance(item, dict):
                raise VolumeError(f"volume {name}: a downwardAPI item is not an object")
            field_ref = item.get("fieldRef")
            if not isinstance(field_ref, dict):
                raise VolumeError(f"volume {name}: downwardAPI item {item.get('path')!r} has no fieldRef "
                                  "(resourceFieldRef is not supported by the wisp runtime)")
            value = field_value(self.pod, str(field_ref.get("fieldPath") or ""))
            if value is None:
                raise VolumeError(f"volume {name}: fieldPath {field_ref.get('fieldPath')!r} is not supported")
            files[_relative(name, item.get("path"))] = _File(value.encode(), _mode(name, item.get("mode"), default))
        return files

    # -- mounting -------------------------------------------------------------------------------
    def mounts(self, container: dict[str, Any]) -> list[tuple[str, str, bool]]:
        """The container's volumeMounts as Sandbox.binds entries (see the module docstring)."""
        binds: list[tuple[str, str, bool]] = []
        for mount in container.get("volumeMounts") or []:
            name, target = mount.get("name"), mount.get("mountPath")
            if name not in self.paths:
                raise VolumeError(f"container {container.get('name')}: volumeMount {name!r} names no prepared volume")
            if not isinstance(target, str) or not target.startswith("/"):
                raise VolumeError(f"container {container.get('name')}: mountPath {target!r} of {name} is not absolute")
            if mount.get("subPathExpr"):
                raise VolumeError(f"container {container.get('name')}: subPathExpr ({name}) is not supported")
            kind = self.kinds[name]
            source = self.paths[name]
            sub_path = mount.get("subPath")
            if sub_path:
                source = self._sub_path(name, kind, source, str(sub_path))
            read_only = bool(mount.get("readOnly")) or kind in ATOMIC_KINDS
            binds.append((str(source), os.path.normpath(target), read_only))
        return binds

    def _sub_path(self, name: str, kind: str, volume: Path, sub_path: str) -> Path:
        relative = _relative(name, sub_path)
        path = volume / relative
        if not os.path.lexists(path) and kind in ("emptyDir", "hostPath") and volume.is_dir():
            _make_below(name, volume, relative, (self.uid, self.group) if kind == "emptyDir" else None)
        real, base = os.path.realpath(path), os.path.realpath(volume)
        if real != base and not real.startswith(base.rstrip("/") + "/"):
            raise VolumeError(f"volume {name}: subPath {sub_path} leaves the volume")
        if not os.path.exists(real):
            raise VolumeError(f"volume {name}: subPath {sub_path} does not exist")
        return Path(real)

    # -- keeping up to date ---------------------------------------------------------------------
    async def refresh_forever(self) -> None:
        """Renew tokens at 80% of their life and follow ConfigMap/Secret changes, until cancelled."""
        next_resync = self.clock() + self.resync
        while True:
            now = self.clock()
            due = min([next_resync, *self.refresh_at.values()])
            await trio.sleep(max(0.0, due - now))
            now = self.clock()
            resync = now >= next_resync
            if resync:
                next_resync = now + self.resync
            for name, volume in self.volumes.items():
                kind = self.kinds.get(name)
                if kind not in ATOMIC_KINDS or not (resync or self.refresh_at.get(name, float("inf")) <= now):
                    continue
                try:
                    await self._write(name, volume, kind)
                    log.debug("volume refreshed", pod=f"{self.namespace}/{self.pod_name}", volume=name)
                except (VolumeError, OSError) as exc:
                    log.warning("volume refresh failed; retrying", pod=f"{self.namespace}/{self.pod_name}",
                                volume=name, error=str(exc))
                    self.refresh_at[name] = now + RETRY_SECONDS

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        try:
            self.pod_dir.rmdir()
        except OSError:
            pass  # not empty (the kubelet's own files) or gone already


# -- helpers ------------------------------------------------------------------------------------------
def _kind(name: str, volume: dict[str, Any]) -> str:
    kinds = [k for k in volume if k != "name"]
    for kind in kinds:
        if kind in SUPPORTED:
            return kind
    raise VolumeError(f"volume {name}: {', '.join(kinds) or 'no source'} is not supported by the wisp runtime "
                      f"({', '.join(SUPPORTED)} are)")


def _mode(name: str, value: Any, default: int) -> int:
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 0o777:
        raise VolumeError(f"volume {name}: mode {value!r} is not between 0 and 0777")
    return value


def _b64(name: str, key: str, value: Any) -> bytes:
    try:
        return base64.b64decode(str(value), validate=True)
    except ValueError:
        raise VolumeError(f"volume {name}: key {key} is not base64") from None


def _relative(name: str, path: Any) -> str:
    """A path inside a volume: relative, no `..` element, not starting with `..` (AtomicWriter's own)."""
    if not isinstance(path, str) or not path or path.startswith("/"):
        raise VolumeError(f"volume {name}: path {path!r} must be a relative path")
    parts = path.split("/")
    if ".." in parts or parts[0].startswith(".."):
        raise VolumeError(f"volume {name}: path {path!r} may not contain '..'")
    return os.path.normpath(path)


def field_value(pod: dict[str, Any], field_path: str) -> str | None:
    """A downward API fieldRef's value in the kubelet's format; None for a path not supported."""
    meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    simple = {"metadata.name": meta.get("name"), "metadata.namespace": meta.get("namespace"),
              "metadata.uid": meta.get("uid"), "spec.nodeName": spec.get("nodeName"),
              "spec.serviceAccountName": spec.get("serviceAccountName")}
    if field_path in simple:
        return str(simple[field_path] or "")
    if field_path in ("metadata.labels", "metadata.annotations"):
        values = meta.get(field_path.split(".")[1]) or {}
        return "\n".join(f"{key}={json.dumps(str(values[key]))}" for key in sorted(values))
    match = _FIELD_BY_KEY.match(field_path)
    if match:
        return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
    return None


def _make_below(name: str, volume: Path, relative: str, owner: tuple[int, int] | None) -> None:
    """mkdir -p `relative` inside `volume` without following a link: the pod writes the volume, and
    a link it made there (`a -> /etc`) must not have the runtime, as root, create (and give the pod)
    directories on the machine (CVE-2017-1002101's subPath escape)."""
    fd = os.open(volume, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in relative.split("/"):
            try:
                os.mkdir(part, 0o755, dir_fd=fd)
                if owner is not None:
                    os.chown(part, *owner, dir_fd=fd, follow_symlinks=False)
            except FileExistsError:
                pass
            try:
                child = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except OSError:
                raise VolumeError(f"volume {name}: subPath {relative} passes {part!r}, "
                                  "which is a link or not a directory") from None
            os.close(fd)
            fd = child
    finally:
        os.close(fd)


def renewal_time(issued: float, expires: float) -> float:
    """When a token issued at `issued` and expiring at `expires` (wall clock) is renewed: at 80% of
    its life, and no later than a day after it was issued."""
    return issued + min(REFRESH_FRACTION * max(expires - issued, 0.0), MAX_TOKEN_AGE)


def write_atomic(directory: Path, files: dict[str, _File], uid: int, gid: int) -> None:
    """Replace the content of `directory` with `files` as the kubelet's AtomicWriter does."""
    directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    stamp = time.strftime("%Y_%m_%d_%H_%M_%S", time.gmtime())
    fresh = directory / f"..{stamp}.{os.urandom(4).hex()}"
    fresh.mkdir(mode=0o755)
    for relative, file in files.items():
        target = fresh / relative
        target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, file.data)
            os.fchown(fd, uid, gid)
            os.fchmod(fd, file.mode)
        finally:
            os.close(fd)
    switch = directory / "..data_tmp"
    switch.unlink(missing_ok=True)
    switch.symlink_to(fresh.name)
    os.replace(switch, directory / DATA_LINK)
    top = {relative.split("/", 1)[0] for relative in files}
    for entry in top:
        link = directory / entry
        if not link.is_symlink():
            link.symlink_to(f"{DATA_LINK}/{entry}")
    for entry in os.listdir(directory):
        if entry.startswith(".."):
            if entry not in (DATA_LINK, fresh.name):  # the previous content, now unreferenced
                shutil.rmtree(directory / entry, ignore_errors=True)
        elif entry not in top and (directory / entry).is_symlink():
            (directory / entry).unlink()
