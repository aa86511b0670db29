"""What the figures were measured on: CPU, cores, kernel, Python, OpenSSL and library versions."""

from __future__ import annotations

import os
import platform
import ssl
import subprocess
from importlib import metadata
from pathlib import Path


def describe() -> dict:
    cpu = _cpuinfo()
    return {
        "cpu": cpu.get("model name", platform.processor() or "unknown"),
        "cpu_mhz": cpu.get("cpu MHz"),
        "cpu_flags": sorted({"aes", "vaes", "avx2", "avx512f", "pclmulqdq", "vpclmulqdq"}
                            & set(cpu.get("flags", "").split())),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "openssl": ssl.OPENSSL_VERSION,
        "packages": {name: _version(name) for name in ("trio", "h2", "hpack", "hyperframe")},
    }


def summary(machine: dict) -> str:
    """One line for a report header."""
    packages = ", ".join(f"{k} {v}" for k, v in machine["packages"].items())
    return (f"{machine['cpu']}, {machine['cores']} cores ({machine['cores_usable']} usable), "
            f"Linux {machine['kernel']}, Python {machine['python']}, {machine['openssl']}, {packages}")


# What the benchmark exercises; changes elsewhere in the tree do not touch the figures.
MEASURED_CODE = ("wisp/engine", "wisp/h2", "wisp/hbone", "wisp/sockets.py", "wisp/identity", "bench/hbone")


def source(root: Path, measured: tuple[str, ...] = MEASURED_CODE) -> dict:
    """The revision measured: commit, and files of the measured code that differ from it."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                                  timeout=10, check=True).stdout.rstrip("\n")
        except (OSError, subprocess.SubprocessError):
            return ""
    changed = [line[3:] for line in git("status", "--porcelain", "--", *measured).splitlines()]
    return {"commit": git("rev-parse", "--short", "HEAD") or "unknown", "changes": changed}


def _cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if not sep:
                    if info:
                        break  # the first processor block is enough
                    continue
                info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return info


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "missing"
