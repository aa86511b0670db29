"""`wisp` subcommands that talk to a mesh's API: the local mesh's or a Kubernetes cluster's.

Each module here offers `add_commands(sub)`, which adds its parsers and sets a `handler(args) -> int`
default on each; `wisp.cli` adds every module listed in `MODULES` and calls the handler. A module
keeps its heavy imports inside its handlers, so `wisp --help` stays quick.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# Module names under wisp.commands, in the order their commands appear in `wisp --help`.
MODULES: tuple[str, ...] = ("mesh", "waypoint", "install", "precheck", "ztunnel_config", "rollout")


def modules() -> list[ModuleType]:
    return [importlib.import_module(f"{__name__}.{name}") for name in MODULES]
