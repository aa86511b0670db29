"""In-pod redirection (Istio's rules, ip rule/route) and the node's probe SNAT, in scratch netns."""

from __future__ import annotations

import subprocess

import pytest

from cni import hostprobe, iptables, rules
from cni.errors import RulesError
from tests.support.netns import netns_run, random_prefix, scratch_netns

pytestmark = pytest.mark.root

EXPECTED_V4 = """\
*mangle
:PREROUTING ACCEPT
:INPUT ACCEPT
:FORWARD ACCEPT
:OUTPUT ACCEPT
:POSTROUTING ACCEPT
:ISTIO_OUTPUT -
:ISTIO_PRERT -
-A PREROUTING -j ISTIO_PRERT
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -m connmark --mark 0x111/0xfff -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff
-A ISTIO_PRERT -m mark --mark 0x539/0xfff -j CONNMARK --set-xmark 0x111/0xfff
COMMIT
*nat
:PREROUTING ACCEPT
:INPUT ACCEPT
:OUTPUT ACCEPT
:POSTROUTING ACCEPT
:ISTIO_OUTPUT -
:ISTIO_PRERT -
-A PREROUTING -j ISTIO_PRERT
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -d 169.254.7.127/32 -p tcp -m tcp -j ACCEPT
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -m tcp --dport 53 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15053
-A ISTIO_OUTPUT -p tcp -m mark --mark 0x111/0xfff -j ACCEPT
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -j ACCEPT
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001
-A ISTIO_PRERT -s 169.254.7.127/32 -p tcp -m tcp -j ACCEPT
-A ISTIO_PRERT ! -d 127.0.0.1/32 -p tcp -m tcp ! --dport 15008 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15006
COMMIT
"""
ISTIO_IP_RULE = "32764:\tfrom all fwmark 0x111/0xfff lookup 100"
# A pod's own rules that enrolment must leave alone.
POD_OWN_RULES = """\
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -p tcp -m tcp --dport 9999 -j DROP
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:APP_OUT - [0:0]
-A OUTPUT -j APP_OUT
-A APP_OUT -d 10.9.9.9/32 -p tcp -j RETURN
COMMIT
"""


@pytest.fixture
def pod_netns():
    with scratch_netns(f"{random_prefix()}-shop-web") as path:
        yield path


@pytest.fixture
def node_netns():
    with scratch_netns(f"{random_prefix()}-node1") as path:
        yield path


def saved(path: str, family: int = 4) -> str:
    return iptables.canonical(netns_run(path, "iptables-save" if family == 4 else "ip6tables-save"))


def ip_rules(path: str, family: int = 4) -> str:
    return netns_run(path, "ip", f"-{family}", "rule", "list")


def test_rule_set_is_istios_in_pod_rule_set():
    script = rules.render_apply({}, 4)
    for table in ("mangle", "nat"):
        assert f"*{table}\n:ISTIO_PRERT - [0:0]\n:ISTIO_OUTPUT - [0:0]\n" in script
    body = [line for line in script.splitlines() if line.startswith("-A")]
    assert body == [
        "-A PREROUTING -j ISTIO_PRERT",
        "-A OUTPUT -j ISTIO_OUTPUT",
        "-A ISTIO_PRERT -m mark --mark 0x539/0xfff -j CONNMARK --set-xmark 0x111/0xfff",
        "-A ISTIO_OUTPUT -m connmark --mark 0x111/0xfff -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff",
        "-A OUTPUT -j ISTIO_OUTPUT",
        "-A PREROUTING -j ISTIO_PRERT",
        "-A ISTIO_PRERT -s 169.254.7.127/32 -p tcp -m tcp -j ACCEPT",
        "-A ISTIO_OUTPUT -d 169.254.7.127/32 -p tcp -m tcp -j ACCEPT",
        "-A ISTIO_PRERT ! -d 127.0.0.1/32 -p tcp -m tcp ! --dport 15008 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15006",
        "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -m tcp --dport 53 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15053",
        "-A ISTIO_OUTPUT -p tcp -m mark --mark 0x111/0xfff -j ACCEPT",
        "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -j ACCEPT",
        "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001",
    ]


def test_ipv6_rule_set_uses_v6_loopback_and_probe_address():
    nat = rules.inpod_rules(6)["nat"]
    assert "-A ISTIO_PRERT -s fd16:9254:7127:1337:ffff:ffff:ffff:ffff/128 -p tcp -m tcp -j ACCEPT" in nat
    assert not any("127.0.0.1" in rule for rule in nat)
    assert sum("! -d ::1/128" in rule for rule in nat) == 4


def test_dns_capture_can_be_left_out():
    assert not any("15053" in rule for rule in rules.inpod_rules(4, dns_capture=False)["nat"])


def test_removal_script_takes_out_only_what_is_there():
    current = iptables.parse_save("*nat\n:OUTPUT ACCEPT [0:0]\n:ISTIO_OUTPUT - [0:0]\n-A OUTPUT -j ISTIO_OUTPUT\nCOMMIT\n")
    assert rules.render_remove(current) == "*nat\n-D OUTPUT -j ISTIO_OUTPUT\n-F ISTIO_OUTPUT\n-X ISTIO_OUTPUT\nCOMMIT\n"
    assert rules.render_remove({}) == ""


async def test_apply_installs_istio_rules_and_policy_route_in_the_pod_netns(pod_netns):
    await rules.PodRules().apply(pod_netns, ["10.244.1.5"])
    assert saved(pod_netns) == EXPECTED_V4
    assert ISTIO_IP_RULE in ip_rules(pod_netns)
    assert netns_run(pod_netns, "ip", "route", "show", "table", "100").split()[:4] == ["local", "default", "dev", "lo"]


async def test_applying_twice_leaves_the_same_rules_and_one_ip_rule(pod_netns):
    pod_rules = rules.PodRules()
    await pod_rules.apply(pod_netns, ["10.244.1.5"])
    first = (saved(pod_netns), ip_rules(pod_netns))
    await pod_rules.apply(pod_netns, ["10.244.1.5"])
    assert (saved(pod_netns), ip_rules(pod_netns)) == first
    assert ip_rules(pod_netns).count("fwmark 0x111/0xfff") == 1
    assert await pod_rules.routing_state(pod_netns) == (1, 1)


async def test_removal_restores_an_empty_ruleset_and_routing(pod_netns):
    original = (saved(pod_netns), ip_rules(pod_netns), ip_rules(pod_netns, 6))
    assert original[0] == ""
    pod_rules = rules.PodRules()
    await pod_rules.apply(pod_netns, ["10.244.1.5"])
    await pod_rules.remove(pod_netns)
    assert (saved(pod_netns), ip_rules(pod_netns), ip_rules(pod_netns, 6)) == original
    assert netns_run(pod_netns, "ip", "route", "show", "table", "100") == ""


async def test_removal_keeps_the_pods_own_rules_exactly(pod_netns):
    subprocess.run(["nsenter", f"--net={pod_netns}", "iptables-restore"], input=POD_OWN_RULES, text=True, check=True)
    original = saved(pod_netns)
    pod_rules = rules.PodRules()
    await pod_rules.apply(pod_netns, ["10.244.1.5"])
    assert "-A APP_OUT -d 10.9.9.9/32 -p tcp -j RETURN" in saved(pod_netns)
    await pod_rules.remove(pod_netns)
    assert saved(pod_netns) == original


async def test_removing_twice_is_harmless(pod_netns):
    pod_rules = rules.PodRules()
    await pod_rules.apply(pod_netns, ["10.244.1.5"])
    await pod_rules.remove(pod_netns)
    await pod_rules.remove(pod_netns)
    assert saved(pod_netns) == ""


async def test_ipv6_pod_gets_ip6tables_rules_and_a_v6_policy_route(pod_netns):
    pod_rules = rules.PodRules()
    await pod_rules.apply(pod_netns, ["10.244.1.5", "fd00:10:244:1::5"])
    v6 = saved(pod_netns, 6)
    assert "-A ISTIO_PRERT -s fd16:9254:7127:1337:ffff:ffff:ffff:ffff/128 -p tcp -m tcp -j ACCEPT" in v6
    assert ISTIO_IP_RULE in ip_rules(pod_netns, 6)
    assert await pod_rules.routing_state(pod_netns) == (2, 2)
    await pod_rules.remove(pod_netns)
    assert (saved(pod_netns), saved(pod_netns, 6)) == ("", "")
    assert await pod_rules.routing_state(pod_netns) == (0, 0)


async def test_v4_only_pod_gets_no_ip6tables_rules(pod_netns):
    await rules.PodRules().apply(pod_netns, ["10.244.1.5"])
    assert saved(pod_netns, 6) == ""


async def test_apply_in_a_missing_netns_is_a_rules_error():
    with pytest.raises(RulesError, match="cannot install redirection"):
        await rules.PodRules().apply(f"/var/run/netns/{random_prefix()}-gone", ["10.244.1.5"])


# -- probe SNAT on the node ------------------------------------------------------------------------
PROBE_RULE = ("-A ISTIO_POSTRT -p tcp -m owner --socket-exists -m set --match-set istio-inpod-probes-v4 dst "
              "-j SNAT --to-source 169.254.7.127")


async def test_probe_snat_rule_matches_enrolled_pod_ips(node_netns):
    probe = hostprobe.HostProbe(node_netns)
    await probe.install()
    await probe.add(["10.244.1.5", "10.244.1.6"])
    nat = saved(node_netns)
    assert "-A POSTROUTING -j ISTIO_POSTRT" in nat
    assert PROBE_RULE in nat
    assert await probe.members() == {"10.244.1.5", "10.244.1.6"}
    await probe.remove(["10.244.1.5"])
    assert await probe.members() == {"10.244.1.6"}


async def test_probe_install_twice_leaves_one_rule(node_netns):
    probe = hostprobe.HostProbe(node_netns)
    await probe.install()
    first = saved(node_netns)
    await hostprobe.HostProbe(node_netns).install()
    assert saved(node_netns) == first
    assert first.count("--match-set istio-inpod-probes-v4") == 1


async def test_probe_uninstall_restores_the_node(node_netns):
    probe = hostprobe.HostProbe(node_netns)
    await probe.install()
    await probe.add(["10.244.1.5", "fd00:10:244:1::5"])
    await probe.uninstall()
    assert (saved(node_netns), saved(node_netns, 6)) == ("", "")
    assert netns_run(node_netns, "ipset", "list", "-n") == ""


async def test_probe_sync_drops_addresses_of_pods_that_left(node_netns):
    probe = hostprobe.HostProbe(node_netns)
    await probe.install()
    await probe.add(["10.244.1.5", "10.244.1.9"])
    await hostprobe.HostProbe(node_netns).sync(["10.244.1.5", "10.244.1.7"])
    assert await probe.members() == {"10.244.1.5", "10.244.1.7"}
