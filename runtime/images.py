"""Container images in the wisp runtime: which image names it knows and what each one runs.

The runtime has no container images: a container runs the machine's programs (confined by its
sandbox). An image name therefore stands for a set of programs and a default command, the way
a user's manifest expects it to:

| image (any registry, tag or digest) | command when the container gives none | programs |
|---|---|---|
| `wisp` (the project's image: `wisp:0.1.0`, `wisp:latest`, `ghcr.io/…/wisp:…`) | `wisp --help` (the Dockerfile's CMD) | wisp's entry points from the installed package's bin directory (wisp-operator, wisp-ztunnel, wisp-node-agent, wisp-cni, wisp-waypoint, wisp-echo, wisp, python3), then the machine's PATH |
| `busybox`, `alpine`, `debian`, `ubuntu` | `sh` | the machine's PATH (sleep, sh, wget, …) |
| `curlimages/curl` | `curl` (its ENTRYPOINT, with the container's args) | the machine's `curl`, then its PATH |
| `nginx` | `wisp-echo --http 80` (an HTTP server on port 80, as nginx's default page; the machine's nginx needs root's paths) | the echo app |
| no image (and every image in the local runtime, whose manifests run commands) | — (a command is required) | as `wisp` |

Contract:
- `resolve(image, command, args, bin_dir, path)` returns the argv to run (command and args as
  Kubernetes combines them with the image's ENTRYPOINT and CMD), with the program resolved to
  an absolute path; `ImageError(reason, message)` says why not: `ErrImagePull` for an image the
  runtime does not know (the message lists those it knows) or one whose programs this machine
  lacks, `RunContainerError` for a command not found. Nothing here waits or touches the network.
- `known()` lists the image names, for messages and docs.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path


class ImageError(Exception):
    """The container cannot start from its image; `reason` is the container's waiting reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(slots=True, frozen=True)
class Image:
    name: str  # repository without registry, tag or digest
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    wisp_programs: bool = False  # the package's bin directory comes first on its PATH
    needs: tuple[str, ...] = ()  # machine programs the image cannot do without


IMAGES = {
    image.name: image for image in (
        Image("wisp", cmd=("wisp", "--help"), wisp_programs=True),
        Image("busybox", cmd=("sh",), needs=("sh",)),
        Image("alpine", cmd=("sh",), needs=("sh",)),
        Image("debian", cmd=("bash",), needs=("sh",)),
        Image("ubuntu", cmd=("bash",), needs=("sh",)),
        Image("curlimages/curl", entrypoint=("curl",), needs=("curl",)),
        Image("nginx", cmd=("wisp-echo", "--http", "80"), wisp_programs=True),
    )
}
NO_IMAGE = Image("", wisp_programs=True)


def known() -> list[str]:
    return sorted(IMAGES)


def repository(image: str) -> str:
    """`docker.io/library/busybox:1.36@sha256:…` → `busybox`; `ghcr.io/x/wisp:0.1` → `x/wisp`."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)
    if ":" in last[-1]:
        name = name[: len(name) - len(last[-1]) + last[-1].index(":")]
    parts = name.split("/")
    # A first component with a dot or a port, or "localhost", is a registry.
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        parts = parts[1:]
    if len(parts) > 1 and parts[0] == "library":
        parts = parts[1:]
    return "/".join(parts)


def lookup(image: str) -> Image:
    if not image:
        return NO_IMAGE
    name = repository(image)
    if name in IMAGES:
        return IMAGES[name]
    # The project's image under any registry path: …/wisp.
    if name.rsplit("/", 1)[-1] == "wisp":
        return IMAGES["wisp"]
    raise ImageError("ErrImagePull",
                     f"image {image!r}: no such image in the wisp runtime (containers run the machine's programs); "
                     f"known: {', '.join(known())}")


def search_path(image: Image, bin_dir: Path, path: str) -> str:
    """The PATH a container of `image` gets."""
    return f"{bin_dir}:{path}" if image.wisp_programs else f"{path}:{bin_dir}"


def resolve(image: str, command: list[str] | None, args: list[str] | None, bin_dir: Path,
            path: str = os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")) -> list[str]:
    """The argv a container runs (see the module docstring); ImageError when it cannot."""
    spec = lookup(image)
    search = search_path(spec, bin_dir, path)
    for program in spec.needs:
        if shutil.which(program, path=path) is None:
            raise ImageError("ErrImagePull", f"image {image!r} needs {program!r}, which this machine does not have")
    # Kubernetes: command replaces ENTRYPOINT (and drops CMD); args replace CMD.
    if command:
        argv = list(command) + list(args or [])
    else:
        argv = list(spec.entrypoint) + (list(args) if args else list(spec.cmd))
    if not argv:
        raise ImageError("RunContainerError",
                         "the container has no command and no image gives one; the wisp runtime runs commands")
    program = argv[0]
    if "/" in program:
        found = program if os.access(program, os.X_OK) else None
    else:
        found = shutil.which(program, path=search)
    if found is None:
        raise ImageError("RunContainerError",
                         f"command {program!r} not found in image {image or '(none)'!r} (searched {search})")
    return [found, *argv[1:]]
