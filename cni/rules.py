"""In-pod traffic redirection: Istio's rule set, applied to and removed from a pod's netns.

The rule set is Istio's (istio/istio cni/pkg/iptables): mangle and nat chains ISTIO_PRERT and
ISTIO_OUTPUT hooked from PREROUTING/OUTPUT, REDIRECT (not TPROXY) to ztunnel's in-pod listeners
15001/15006/15053, marks 0x539 (ztunnel's own sockets) and 0x111 (connmark), probe source
169.254.7.127; plus a policy route so replies to ztunnel's transparent sockets reach it:
`ip rule add fwmark 0x111/0xfff pref 32764 lookup 100` and `ip route add local 0.0.0.0/0 dev lo
table 100`. IPv6 likewise when the pod has a v6 address.

Rules are produced in iptables-save's own spelling so that "is it already there" is a string
comparison. Applying re-declares our chains (iptables-restore flushes a declared chain, in one
transaction) and adds the hooks from the built-in chains only when missing, so applying twice
changes nothing. Removal is computed from what is there now, so it works after an agent restart
and takes out exactly our chains and hooks, leaving the pod's own rules as they were.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from wisp import netns as wnetns

from . import iptables
from .errors import CommandFailed, RulesError

ZTUNNEL_MARK = 0x539
CONN_MARK = 0x111
MARK_MASK = 0xFFF
ROUTE_TABLE = 100
RULE_PRIORITY = 32764
PROBE_SOURCE_V4 = "169.254.7.127"
PROBE_SOURCE_V6 = "fd16:9254:7127:1337:ffff:ffff:ffff:ffff"
OUTBOUND_PORT = 15001
INBOUND_PLAINTEXT_PORT = 15006
HBONE_PORT = 15008
DNS_PORT = 15053

PRERT = "ISTIO_PRERT"
OUTPUT = "ISTIO_OUTPUT"
OUR_TABLES = ("mangle", "nat")
HOOKS = {
    "mangle": (f"-A PREROUTING -j {PRERT}", f"-A OUTPUT -j {OUTPUT}"),
    "nat": (f"-A OUTPUT -j {OUTPUT}", f"-A PREROUTING -j {PRERT}"),
}


def families_for(ips: Iterable[str]) -> tuple[int, ...]:
    """IPv4 always; IPv6 as well when the pod has a v6 address."""
    has_v6 = any(ipaddress.ip_address(ip).version == 6 for ip in ips)
    return (4, 6) if has_v6 else (4,)


def inpod_rules(family: int = 4, *, dns_capture: bool = True) -> dict[str, tuple[str, ...]]:
    """Istio's in-pod rules (without the hooks), per table, as iptables-save prints them."""
    local = "127.0.0.1/32" if family == 4 else "::1/128"
    probe = f"{PROBE_SOURCE_V4}/32" if family == 4 else f"{PROBE_SOURCE_V6}/128"
    mark, connmark = f"0x{ZTUNNEL_MARK:x}/0x{MARK_MASK:x}", f"0x{CONN_MARK:x}/0x{MARK_MASK:x}"
    mangle = (
        f"-A {PRERT} -m mark --mark {mark} -j CONNMARK --set-xmark {connmark}",
        f"-A {OUTPUT} -m connmark --mark {connmark} -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff",
    )
    nat = [
        f"-A {PRERT} -s {probe} -p tcp -m tcp -j ACCEPT",
        f"-A {OUTPUT} -d {probe} -p tcp -m tcp -j ACCEPT",
        f"-A {PRERT} ! -d {local} -p tcp -m tcp ! --dport {HBONE_PORT} -m mark ! --mark {mark} "
        f"-j REDIRECT --to-ports {INBOUND_PLAINTEXT_PORT}",
    ]
    if dns_capture:
        nat.append(f"-A {OUTPUT} ! -d {local} -p tcp -m tcp --dport 53 -m mark ! --mark {mark} "
                   f"-j REDIRECT --to-ports {DNS_PORT}")
    nat += [
        f"-A {OUTPUT} -p tcp -m mark --mark {connmark} -j ACCEPT",
        f"-A {OUTPUT} ! -d {local} -o lo -j ACCEPT",
        f"-A {OUTPUT} ! -d {local} -p tcp -m mark ! --mark {mark} -j REDIRECT --to-ports {OUTBOUND_PORT}",
    ]
    return {"mangle": mangle, "nat": tuple(nat)}


def render_apply(current: dict[str, iptables.Table], family: int = 4, *, dns_capture: bool = True) -> str:
    """iptables-restore --noflush input that leaves exactly one copy of our rules in place."""
    out: dict[str, list[str]] = {}
    for table, rules in inpod_rules(family, dns_capture=dns_capture).items():
        have = current.get(table, iptables.Table(table))
        lines = [f":{PRERT} - [0:0]", f":{OUTPUT} - [0:0]"]  # declaring a chain flushes it
        lines += [hook for hook in HOOKS[table] if have.count(hook) == 0]
        lines += rules
        out[table] = lines
    return iptables.render(out)


def render_remove(current: dict[str, iptables.Table]) -> str:
    """iptables-restore --noflush input removing our hooks and chains; "" when none are there."""
    out: dict[str, list[str]] = {}
    for table in OUR_TABLES:
        have = current.get(table)
        if have is None:
            continue
        lines = [f"-D{hook[2:]}" for hook in HOOKS[table] for _ in range(have.count(hook))]
        ours = [chain for chain in (PRERT, OUTPUT) if have.has_chain(chain)]
        lines += [f"-F {chain}" for chain in ours]
        lines += [f"-X {chain}" for chain in ours]
        out[table] = lines
    return iptables.render(out)


# -- policy routing (pyroute2, on a worker thread inside the pod netns) ------------------------
_DEFAULT = {4: "0.0.0.0/0", 6: "::/0"}
_AF = {4: socket.AF_INET, 6: socket.AF_INET6}


def _our_rules(ipr: IPRoute, family: int) -> list:
    return [
        r for r in ipr.get_rules(family=_AF[family])
        if r.get_attr("FRA_PRIORITY") == RULE_PRIORITY and r.get_attr("FRA_FWMARK") == CONN_MARK
        and r.get_attr("FRA_FWMASK") == MARK_MASK and (r.get_attr("FRA_TABLE") or r.get("table")) == ROUTE_TABLE
    ]


def _our_routes(ipr: IPRoute, family: int, lo: int) -> list:
    return [
        r for r in ipr.get_routes(family=_AF[family], table=ROUTE_TABLE)
        if r.get("dst_len") == 0 and r.get("type") == 2 and r.get_attr("RTA_OIF") == lo  # RTN_LOCAL
    ]


def _install_routing(families: tuple[int, ...]) -> None:
    with IPRoute() as ipr:
        lo = ipr.link_lookup(ifname="lo")[0]
        for family in families:
            if not _our_routes(ipr, family, lo):
                ipr.route("add", family=_AF[family], type="local", dst=_DEFAULT[family], oif=lo,
                          table=ROUTE_TABLE, scope=254)
            if not _our_rules(ipr, family):
                ipr.rule("add", family=_AF[family], fwmark=CONN_MARK, fwmask=MARK_MASK,
                         priority=RULE_PRIORITY, table=ROUTE_TABLE)


def _remove_routing() -> None:
    with IPRoute() as ipr:
        lo = ipr.link_lookup(ifname="lo")[0]
        for family in (4, 6):
            for _ in _our_rules(ipr, family):
                _ignore_missing(ipr.rule, "del", family=_AF[family], fwmark=CONN_MARK, fwmask=MARK_MASK,
                                priority=RULE_PRIORITY, table=ROUTE_TABLE)
            for _ in _our_routes(ipr, family, lo):
                _ignore_missing(ipr.route, "del", family=_AF[family], type="local", dst=_DEFAULT[family],
                                oif=lo, table=ROUTE_TABLE, scope=254)


def _routing_state() -> tuple[int, int]:
    """(our ip rules, our local routes) across both families, for checks and tests."""
    with IPRoute() as ipr:
        lo = ipr.link_lookup(ifname="lo")[0]
        return (sum(len(_our_rules(ipr, f)) for f in (4, 6)),
                sum(len(_our_routes(ipr, f, lo)) for f in (4, 6)))


def _ignore_missing(fn, *args, **kwargs) -> None:
    try:
        fn(*args, **kwargs)
    except NetlinkError as exc:
        # Gone between listing and deleting: what we wanted.
        if exc.code not in (errno.ENOENT, errno.ESRCH):
            raise


@dataclass(frozen=True, slots=True)
class PodRules:
    """Installs and removes redirection inside pod network namespaces (given by path)."""

    dns_capture: bool = True

    async def apply(self, netns_path: str, ips: Iterable[str] = ()) -> None:
        families = families_for(ips)
        try:
            for family in families:
                current = iptables.parse_save(await iptables.save(netns_path, family))
                script = render_apply(current, family, dns_capture=self.dns_capture)
                await iptables.restore(netns_path, script, family)
            await self._in_netns(netns_path, _install_routing, families)
        except (CommandFailed, NetlinkError, ValueError, OSError) as exc:
            raise RulesError(f"cannot install redirection in {netns_path}: {exc}") from None

    async def remove(self, netns_path: str) -> None:
        try:
            for family in (4, 6):
                current = iptables.parse_save(await iptables.save(netns_path, family))
                script = render_remove(current)
                if script:
                    await iptables.restore(netns_path, script, family)
            await self._in_netns(netns_path, _remove_routing)
        except (CommandFailed, NetlinkError, ValueError, OSError) as exc:
            raise RulesError(f"cannot remove redirection from {netns_path}: {exc}") from None

    async def routing_state(self, netns_path: str) -> tuple[int, int]:
        return await self._in_netns(netns_path, _routing_state)

    @staticmethod
    async def _in_netns(netns_path: str, fn, *args):
        fd = wnetns.open_netns(netns_path)
        try:
            return await wnetns.run_in_netns(fd, fn, *args)
        finally:
            os.close(fd)
