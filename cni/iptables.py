"""iptables state of a network namespace: read with iptables-save, change with iptables-restore.

The parser and the comparison form are pure functions over text. The two commands run as
subprocesses through trio (never blocking the event loop), under `nsenter --net=PATH` when the
target is another namespace, so the agent's own threads never change namespace for this.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import trio

from .errors import CommandFailed

BUILTIN_CHAINS = {
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    "raw": ("PREROUTING", "OUTPUT"),
    "security": ("INPUT", "FORWARD", "OUTPUT"),
}
_COUNTERS = re.compile(r"\[\d+:\d+\]")


@dataclass(slots=True)
class Table:
    """One table of an iptables-save dump: chains with their policy ("-" for user chains), rules."""

    name: str
    chains: dict[str, str] = field(default_factory=dict)
    rules: list[str] = field(default_factory=list)

    def has_chain(self, chain: str) -> bool:
        return chain in self.chains

    def count(self, rule: str) -> int:
        return self.rules.count(rule)

    @property
    def is_empty(self) -> bool:
        """Only built-in chains with ACCEPT policy and no rules: the same as no table at all."""
        builtin = BUILTIN_CHAINS.get(self.name, ())
        return not self.rules and all(c in builtin and p == "ACCEPT" for c, p in self.chains.items())


def parse_save(text: str) -> dict[str, Table]:
    """Tables of an iptables-save dump, by name."""
    tables: dict[str, Table] = {}
    current: Table | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            current = tables.setdefault(line[1:], Table(line[1:]))
        elif line == "COMMIT":
            current = None
        elif current is None:
            raise ValueError(f"iptables-save line outside a table: {line!r}")
        elif line.startswith(":"):
            name, policy = (line[1:].split() + ["-"])[:2]
            current.chains[name] = policy
        elif line.startswith("-A "):
            current.rules.append(line)
        else:
            raise ValueError(f"unexpected iptables-save line: {line!r}")
    return tables


def canonical(text: str) -> str:
    """A dump in a form two dumps can be compared in: no comments, no counters, no empty tables.

    With the nf_tables backend a table, once touched, stays listed with its built-in chains even
    after every rule and chain in it is gone; such a table filters nothing, so it compares equal
    to the table never having existed.
    """
    out: list[str] = []
    for name, table in parse_save(text).items():
        if table.is_empty:
            continue
        out.append(f"*{name}")
        out.extend(f":{chain} {policy}" for chain, policy in table.chains.items())
        out.extend(table.rules)
        out.append("COMMIT")
    return "\n".join(out) + ("\n" if out else "")


def _tool(name: str, family: int) -> str:
    return name if family == 4 else name.replace("iptables", "ip6tables")


def in_netns(netns: str | None, argv: list[str]) -> list[str]:
    """`argv` run inside the namespace at path `netns` (None: the agent's own)."""
    return argv if netns is None else ["nsenter", f"--net={netns}", *argv]


async def run(argv: list[str], *, stdin: bytes | None = None) -> str:
    """Run a command to completion without blocking the event loop; its stdout, or CommandFailed."""
    try:
        result = await trio.run_process(argv, stdin=stdin or b"", capture_stdout=True, capture_stderr=True,
                                        check=False)
    except OSError as exc:
        raise CommandFailed(argv, None, exc.strerror or str(exc)) from None
    if result.returncode != 0:
        raise CommandFailed(argv, result.returncode, result.stderr.decode(errors="replace"))
    return result.stdout.decode(errors="replace")


async def save(netns: str | None, family: int = 4) -> str:
    return await run(in_netns(netns, [_tool("iptables-save", family)]))


async def restore(netns: str | None, script: str, family: int = 4) -> None:
    """Apply `script` on top of what is there (--noflush); one transaction per run."""
    await run(in_netns(netns, [_tool("iptables-restore", family), "--noflush"]), stdin=script.encode())


def render(tables: dict[str, list[str]]) -> str:
    """iptables-restore input from per-table lines."""
    out: list[str] = []
    for name, lines in tables.items():
        if lines:
            out.append(f"*{name}")
            out.extend(lines)
            out.append("COMMIT")
    return "\n".join(out) + "\n" if out else ""
