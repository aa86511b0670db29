"""`wisp waypoint`'s own parts: the Gateway it generates, istioctl's table layout (checked against
istioctl's test data, istio/istio `istioctl/pkg/waypoint/testdata/waypoint/`), and usage errors.
The commands against a mesh are tested on the test bed (tests/kube/test_waypoint_cli.py) and on
the local mesh (tests/e2e/test_waypoint_cli.py)."""

from __future__ import annotations

import argparse

import pytest
import yaml

from wisp.commands import waypoint


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="wisp")
    waypoint.add_commands(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["waypoint", *argv])


def test_generate_prints_the_gateway_istioctl_prints(capsys: pytest.CaptureFixture[str]) -> None:
    args = parse(["generate", "-n", "shop", "--for", "all", "--name", "edge"])
    assert args.handler(args) == 0
    assert capsys.readouterr().out == (
        "apiVersion: gateway.networking.k8s.io/v1\n"
        "kind: Gateway\n"
        "metadata:\n"
        "  labels:\n"
        "    istio.io/waypoint-for: all\n"
        "  name: edge\n"
        "  namespace: shop\n"
        "spec:\n"
        "  gatewayClassName: istio-waypoint\n"
        "  listeners:\n"
        "  - name: mesh\n"
        "    port: 15008\n"
        "    protocol: HBONE\n")


def test_generate_without_namespace_or_traffic_type_leaves_them_out(capsys: pytest.CaptureFixture[str]) -> None:
    args = parse(["generate"])
    assert args.handler(args) == 0
    generated = yaml.safe_load(capsys.readouterr().out)
    assert generated["metadata"] == {"name": "waypoint"}


def test_options_given_before_the_verb_are_kept() -> None:
    args = parse(["-n", "shop", "--name", "edge", "--prefix", "m1", "list"])
    assert (args.namespace, args.name, args.prefix) == ("shop", "edge", "m1")
    args = parse(["list", "-n", "shop"])
    assert (args.namespace, args.name, args.prefix) == ("shop", "waypoint", None)


def test_tables_are_laid_out_as_gos_tabwriter_lays_out_istioctls() -> None:
    programmed = {"metadata": {"name": "waypoint", "namespace": "default"},
                  "spec": {"gatewayClassName": "istio-waypoint"},
                  "status": {"conditions": [{"type": "Programmed", "status": "True", "reason": "", "message": ""}]}}
    # istioctl's waypoint-status-ready and waypoint-status-all test data, byte for byte.
    assert waypoint.tabulate(waypoint.status_table([programmed], False)) == (
        "NAME         STATUS     TYPE           REASON     MESSAGE\n"
        "waypoint     True       Programmed                \n")
    others = [dict(programmed, metadata={"name": "waypoint", "namespace": ns}) for ns in ("fake3", "fake1", "fake2")]
    assert waypoint.tabulate(waypoint.status_table(others, True)) == (
        "NAMESPACE     NAME         STATUS     TYPE           REASON     MESSAGE\n"
        "fake1         waypoint     True       Programmed                \n"
        "fake2         waypoint     True       Programmed                \n"
        "fake3         waypoint     True       Programmed                \n")


def test_list_columns_are_istioctls_with_the_effective_traffic_type() -> None:
    gateways = [
        {"metadata": {"name": "bookinfo-rev", "namespace": "bookinfo", "labels": {"istio.io/rev": "rev1"}},
         "status": {"conditions": [{"type": "Programmed", "status": "True"}]}},
        {"metadata": {"name": "waypoint", "namespace": "default", "labels": {"istio.io/waypoint-for": "workload"}}},
    ]
    assert waypoint.tabulate(waypoint.list_table(gateways, True)) == (
        "NAMESPACE     NAME             REVISION     TRAFFIC TYPE     PROGRAMMED\n"
        "bookinfo      bookinfo-rev     rev1         service          True\n"
        "default       waypoint         default      workload         False\n")


@pytest.mark.parametrize("text, seconds", [("90s", 90.0), ("2m", 120.0), ("1m30s", 90.0), ("500ms", 0.5), ("3", 3.0)])
def test_durations_are_read_as_go_writes_them(text: str, seconds: float) -> None:
    assert waypoint.parse_duration(text) == seconds


@pytest.mark.parametrize("argv, words", [
    (["apply", "--for", "services"], "invalid traffic type: services. Valid options are: [all none service workload]"),
    (["apply", "--waypoint-timeout", "soon"], "'soon' is not a duration"),
    (["apply", "--waypoint-timeout", "0s"], "the timeout must be positive"),
    (["list", "-n", "Shop"], "'Shop' is not a namespace name"),
    (["launch"], "invalid choice: 'launch'"),
    ([], "required: {generate,apply,list,delete,status}"),
])
def test_bad_arguments_are_usage_errors(argv: list[str], words: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse(argv)
    assert exited.value.code == 2
    assert words in capsys.readouterr().err


def test_kubeconfig_and_prefix_together_are_refused(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    args = parse(["list", "--prefix", "m1", "--kubeconfig", str(tmp_path / "config")])
    assert args.handler(args) == 1
    assert capsys.readouterr().err == "wisp waypoint list: give --kubeconfig (a cluster) or --prefix (a local mesh), not both\n"
