"""Node side of probe handling: SNAT kubelet probes to enrolled pods to 169.254.7.127.

Probes come from a socket on the node (`-m owner --socket-exists`); when they go to an enrolled
pod (an ipset of enrolled pod IPs) their source becomes the probe address, which the in-pod rules
let through without redirection to ztunnel. Istio's rule and set names, in the node's netns (the
agent's own unless `netns` names another).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

import structlog

from . import iptables
from .errors import CommandFailed, RulesError
from .rules import PROBE_SOURCE_V4, PROBE_SOURCE_V6

POSTRT = "ISTIO_POSTRT"
PROBE_SETS = {4: "istio-inpod-probes-v4", 6: "istio-inpod-probes-v6"}
HOOK = f"-A POSTROUTING -j {POSTRT}"

log = structlog.get_logger("cni.hostprobe")


def probe_rule(family: int = 4) -> str:
    """The SNAT rule, as iptables-save prints it."""
    source = PROBE_SOURCE_V4 if family == 4 else PROBE_SOURCE_V6
    return (f"-A {POSTRT} -p tcp -m owner --socket-exists -m set --match-set {PROBE_SETS[family]} dst "
            f"-j SNAT --to-source {source}")


def render_install(current: dict[str, iptables.Table], family: int = 4) -> str:
    nat = current.get("nat", iptables.Table("nat"))
    lines = [f":{POSTRT} - [0:0]"]
    if nat.count(HOOK) == 0:
        lines.append(HOOK)
    lines.append(probe_rule(family))
    return iptables.render({"nat": lines})


def render_uninstall(current: dict[str, iptables.Table]) -> str:
    nat = current.get("nat")
    if nat is None:
        return ""
    lines = [f"-D{HOOK[2:]}"] * nat.count(HOOK)
    if nat.has_chain(POSTRT):
        lines += [f"-F {POSTRT}", f"-X {POSTRT}"]
    return iptables.render({"nat": lines})


def _family(ip: str) -> int:
    return ipaddress.ip_address(ip).version


@dataclass(slots=True)
class HostProbe:
    """The probe SNAT rule and its ipset in the node netns (path; None = the agent's own)."""

    netns: str | None = None
    _installed: set[int] = field(default_factory=set)

    async def install(self, family: int = 4) -> None:
        """Create the set and the rule; safe to repeat (a restarted agent finds them in place)."""
        try:
            await self._ipset("create", PROBE_SETS[family], "hash:ip", "family",
                              "inet" if family == 4 else "inet6", "-exist")
            current = iptables.parse_save(await iptables.save(self.netns, family))
            await iptables.restore(self.netns, render_install(current, family), family)
        except (CommandFailed, ValueError) as exc:
            raise RulesError(f"cannot install the probe SNAT rule: {exc}") from None
        self._installed.add(family)

    async def uninstall(self) -> None:
        """Remove the rule and the sets (not done on agent exit: enrolled pods keep their probes)."""
        try:
            for family in (4, 6):
                script = render_uninstall(iptables.parse_save(await iptables.save(self.netns, family)))
                if script:
                    await iptables.restore(self.netns, script, family)
                await self._ipset("destroy", PROBE_SETS[family], ok_missing=True)
        except (CommandFailed, ValueError) as exc:
            raise RulesError(f"cannot remove the probe SNAT rule: {exc}") from None
        self._installed.clear()

    async def add(self, ips: Iterable[str]) -> None:
        for ip in ips:
            family = _family(ip)
            if family not in self._installed:
                await self.install(family)
            await self._change("add", ip)

    async def remove(self, ips: Iterable[str]) -> None:
        for ip in ips:
            await self._change("del", ip)

    async def members(self, family: int = 4) -> set[str]:
        try:
            out = await self._ipset("list", PROBE_SETS[family], "-output", "save")
        except CommandFailed:
            return set()
        return {parts[2] for parts in (line.split() for line in out.splitlines())
                if len(parts) >= 3 and parts[0] == "add"}

    async def sync(self, ips: Iterable[str]) -> None:
        """Make the sets hold exactly `ips` (start-up: drop pods that left while we were away)."""
        want = set(ips)
        have: set[str] = set()
        for family in (4, 6):
            have |= await self.members(family)
        stale = have - want
        if stale:
            log.info("removing stale probe addresses", addresses=sorted(stale))
            await self.remove(stale)
        await self.add(sorted(want - have))  # one ipset process per address: only the missing

    async def _change(self, verb: str, ip: str) -> None:
        try:
            await self._ipset(verb, PROBE_SETS[_family(ip)], ip, "-exist", ok_missing=verb == "del")
        except CommandFailed as exc:
            raise RulesError(f"cannot {verb} {ip} in the probe set: {exc}") from None

    async def _ipset(self, *args: str, ok_missing: bool = False) -> str:
        try:
            return await iptables.run(iptables.in_netns(self.netns, ["ipset", *args]))
        except CommandFailed as exc:
            if ok_missing and "does not exist" in exc.stderr:
                return ""
            raise
