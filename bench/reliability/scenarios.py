"""The three scenarios of issue 15 (items 2, 3 and 5), each on a mesh of its own under load.

Each returns a JSON-able result whose `figure` is the line for docs/reliability.md and whose
`passed` says whether every goal held. Times are CLOCK_BOOTTIME seconds (probe.py's clock).

- `controlplane_down`: the operator (control plane and CA) is killed and kept down for the
  window by the runtime's own supervision (`wisp up --restart-delay WINDOW`: the supervisor
  restarts it after that long). Certificates are asked for with a lifetime (SECRET_TTL) chosen so
  that their renewal falls due inside the window, 90 s before its end (half-way in short runs),
  and they stay valid past it. Counted: h2load's failures on its established connections, the
  prober's failures on new ones, ztunnel restarts (pids and counters), and when each certificate
  due in the window was renewed after the control plane came back.
- `ztunnel_kill`: once a minute, SIGKILL to one node's ztunnel (node1, the client's, then node2,
  the server's, in turn); the runtime restarts it after its default 1 s. The link between the
  nodes is captured from before the first request to after the last and audited (capture.py).
  Per kill: the time from the new process's start (and from the kill) to the prober's first
  success; every attempt between the kill and the new process failing (fail-closed) and how it
  failed (a reset, never a FIN); the pod's redirection rules read every 0.25 s, unchanged.
- `rotation`: certificates of 2 minutes (SECRET_TTL=2m, renewed every 30 s) under 1,000 req/s;
  0 failed requests on established and new connections; every renewal seen in ztunnel's dump;
  a certificate expired by the time it is presented is refused by the server's ztunnel, and a
  valid one of the same identity accepted (the control).
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from .capture import Capture, audit
from .harness import (
    CLIENT_NODE,
    CONNECTIONS,
    NAMESPACE,
    RATE,
    SERVER_NODE,
    Load,
    Prober,
    ScenarioMesh,
    log,
    now,
    outcomes,
    process_start,
    wait_until,
)
from .probe import MARKER

BODY_IN_CLEAR = b"x" * 64


def _iso(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def _wall_to_boot(when: dt.datetime) -> float:
    """A wall-clock instant on the CLOCK_BOOTTIME axis."""
    return now() + (when - dt.datetime.now(dt.timezone.utc)).total_seconds()


class CertWatch:
    """Polls both ztunnels' certificates every `interval` s: every serial seen, when first seen,
    and any moment a certificate was reported expired or missing."""

    def __init__(self, mesh: ScenarioMesh, interval: float = 2.0) -> None:
        self.mesh, self.interval = mesh, interval
        self.seen: dict[str, dict[str, dict]] = {CLIENT_NODE: {}, SERVER_NODE: {}}
        self.expired: list[tuple[float, str, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> CertWatch:
        self.poll()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

    def poll(self) -> None:
        for node in (CLIENT_NODE, SERVER_NODE):
            try:
                certs = self.mesh.certificates(node)
            except (OSError, ValueError):
                continue
            t = now()
            for cert in certs:
                if cert.get("state") != "available":
                    self.expired.append((t, node, cert.get("state", "?")))
                    continue
                self.seen[node].setdefault(cert["serial"], {**cert, "first_seen": t})

    def serials(self, node: str) -> list[dict]:
        return sorted(self.seen[node].values(), key=lambda c: c["first_seen"])


# -- item 2: the control plane down ------------------------------------------------------------------------
def controlplane_down(minutes: float) -> dict:
    window = minutes * 60
    lead = 60.0
    # Renewal due `before_end` s before the window ends; valid until well after it (the backoff of
    # failed renewals reaches 150 s, ztunnel/identity.py).
    before_end = min(90.0, window / 2)
    lifetime = int(2 * (lead + window - before_end) + 60)
    tail = 150.0
    log(f"control plane down {window:g} s; SECRET_TTL={lifetime}s (renewal ~{window - before_end:g} s into the window)")
    with ScenarioMesh(env={"SECRET_TTL": f"{lifetime}s"}, restart_delay=window) as mesh, \
            tempfile.TemporaryDirectory(prefix=f"{mesh.prefix}-") as scratch:
        rotations = []
        for node in (CLIENT_NODE, SERVER_NODE):
            for cert in mesh.certificates(node):
                rotations.append(_wall_to_boot(_iso(cert["rotation"])))
        if not rotations:
            raise RuntimeError("no certificate in ztunnel's dump")
        start_at = min(rotations) - (window - before_end)
        components = mesh.components()
        ztunnels = {n: (components[f"ztunnel-{n}"]["pid"], components[f"ztunnel-{n}"]["restarts"])
                    for n in (CLIENT_NODE, SERVER_NODE)}
        operator_pid = components["operator"]["pid"]
        load_seconds = max(start_at - now(), 5) + window + tail
        with CertWatch(mesh) as certs, Prober(mesh) as prober:
            load = Load(mesh, load_seconds, Path(scratch))
            wait_until(lambda: now() >= start_at, timeout=max(start_at - now(), 0) + 5, interval=0.5)
            before = dict((n, [c["serial"] for c in certs.serials(n)]) for n in certs.seen)
            t_stop = now()
            os.kill(operator_pid, signal.SIGKILL)
            log(f"operator (pid {operator_pid}) killed; the supervisor restarts it in {window:g} s")
            # The return is captured: a control plane that comes back must not make anything leave
            # in clear while it relearns the pods (flows begun before are checked by port and marker).
            time.sleep(max(0.0, window - 15))
            capture = Capture(mesh.switch, "br0")
            try:
                with capture:
                    back = wait_until(lambda: _operator_back(mesh, operator_pid), timeout=150, interval=0.5)
                    t_back = now()
                    log(f"operator back after {t_back - t_stop:.1f} s" if back else "operator did not come back")
                    renewed = wait_until(lambda: all(len(certs.serials(n)) > len(before[n]) for n in before),
                                         timeout=tail - 30, interval=1.0)
                    time.sleep(max(0.0, t_back + 60 - now()))
                checked = audit(capture.files, (MARKER.encode(), BODY_IN_CLEAR))
            finally:
                capture.remove()
            result_load = load.wait()
        components = mesh.components()
        restarts = {n: {"pid_before": pid, "pid_after": components[f"ztunnel-{n}"]["pid"],
                        "restarts": components[f"ztunnel-{n}"]["restarts"] - count}
                    for n, (pid, count) in ztunnels.items()}
        due = {n: [c for c in certs.serials(n) if c["serial"] in before[n]
                   and t_stop <= _wall_to_boot(_iso(c["rotation"])) <= t_back] for n in before}
        renewals = {n: [{"serial": c["serial"], "seen_after_return_s": round(c["first_seen"] - t_back, 1)}
                        for c in certs.serials(n) if c["serial"] not in before[n]] for n in before}
        window_attempts = prober.between(t_stop, t_back)
        after_return = prober.between(t_back, t_back + 60)
        probe_failures = sum(1 for a in prober.attempts if a.outcome != "ok")
    no_restarts = all(r["pid_before"] == r["pid_after"] and r["restarts"] == 0 for r in restarts.values())
    due_count = sum(len(v) for v in due.values())
    renewed_all = bool(renewed) and due_count == 2
    failed = result_load["failed"] + result_load["non_2xx"]
    passed = (failed == 0 and probe_failures == 0 and no_restarts and renewed_all and not certs.expired
              and checked.clean and not capture.dropped)
    latest = max((r["seen_after_return_s"] for v in renewals.values() for r in v[:1]), default=None)
    figure = (f"control plane down {t_back - t_stop:.0f} s under {RATE:,} req/s: h2load {result_load['done']:,} "
              f"requests on {CONNECTIONS} established connections, {failed} failed; new connections "
              f"{len(window_attempts):,} in the window ({len(prober.attempts):,} in all), {probe_failures} failed; "
              f"certificates due in the window {due_count} of 2 nodes, renewed "
              + (f"≤ {latest:.0f} s after the return" if renewed_all and latest is not None else "NOT all")
              + f"; expired/missing certificate reports {len(certs.expired)}; ztunnel restarts "
              f"{sum(r['restarts'] for r in restarts.values())}, pids unchanged {no_restarts}; from 15 s before "
              f"the return to 60 s after, plaintext bytes between the nodes {checked.plaintext_bytes} of "
              f"{checked.tcp_payload_bytes:,}, markers in clear {checked.marker_hits}")
    return {"scenario": "controlplane_down", "passed": passed, "figure": figure, "window_s": t_back - t_stop,
            "secret_ttl_s": lifetime, "load": result_load, "probe": outcomes(prober.attempts),
            "probe_window": outcomes(window_attempts), "probe_after_return": outcomes(after_return),
            "capture": {**checked.summary(), "dropped": capture.dropped}, "ztunnels": restarts, "due": due, "renewals": renewals,
            "expired_reports": certs.expired[:20]}


def _operator_back(mesh: ScenarioMesh, old_pid: int) -> bool:
    operator = mesh.components().get("operator", {})
    if not operator.get("pid") or operator["pid"] == old_pid:
        return False
    # Serving again: the runtime's own client reaches it (`wisp get` answers).
    done = subprocess.run([str(Path(sys.executable).parent / "wisp"), "get", "pods", "--prefix", mesh.prefix],
                          capture_output=True, text=True, timeout=15)
    return done.returncode == 0


# -- item 3: ztunnel killed and restarted --------------------------------------------------------------------
def ztunnel_kill(minutes: float) -> dict:
    kills = max(1, int(round(minutes)))
    cycle = 60.0
    before_kill = 20.0
    with ScenarioMesh(restart_delay=1.0) as mesh, tempfile.TemporaryDirectory(prefix=f"{mesh.prefix}-") as scratch:
        pods = {CLIENT_NODE: mesh.client, SERVER_NODE: mesh.server}
        rules_before = {node: mesh.redirection(pod) for node, pod in pods.items()}
        capture = Capture(mesh.switch, "br0")
        results = []
        try:
            with capture, Prober(mesh) as prober:
                for i in range(kills):
                    node = (CLIENT_NODE, SERVER_NODE)[i % 2]
                    results.append(_kill_cycle(mesh, prober, node, pods[node], rules_before[node], cycle,
                                               before_kill, Path(scratch), i))
                all_attempts = outcomes(prober.attempts)
            log(f"auditing {len(capture.files)} capture file(s)")
            checked = audit(capture.files, (MARKER.encode(), BODY_IN_CLEAR))
        finally:
            capture.remove()
    recoveries = [r["recovery_from_start_s"] for r in results if r["recovery_from_start_s"] is not None]
    from_kill = [r["recovery_from_kill_s"] for r in results if r["recovery_from_kill_s"] is not None]
    bypass = sum(r["ok_while_down"] for r in results)
    rule_changes = sum(r["rules_changed"] for r in results)
    samples = sum(r["rules_samples"] for r in results)
    passed = (checked.clean and not checked.gaps and not capture.dropped and bypass == 0 and rule_changes == 0
              and len(recoveries) == kills and max(recoveries) <= 2.0)
    window_totals: dict[str, int] = {}
    for r in results:
        for k, v in r["window_outcomes"].items():
            window_totals[k] = window_totals.get(k, 0) + v
    loads = [r[k] for r in results for k in ("load_before", "load_after") if r[k]]
    served = sum(x["requests"] for x in loads)
    figure = (f"{kills} SIGKILLs (node1/node2 in turn) under {RATE:,} req/s ({served:,} requests served by "
              f"h2load): plaintext bytes between the nodes "
              f"{checked.plaintext_bytes} of {checked.tcp_payload_bytes:,} payload bytes captured "
              f"({checked.packets:,} packets, {checked.flows_from_syn} of {checked.flows} connections parsed as "
              f"TLS records from their SYN: {checked.tls_records:,} records, {checked.not_tls_bytes} bytes not TLS, "
              f"markers in clear {checked.marker_hits}, capture drops {capture.dropped}, gaps {checked.gaps}); "
              f"recovery from the new process's start to the first success max {max(recoveries, default=float('nan')):.2f} s "
              f"(median {_median(recoveries):.2f}; from the kill max {max(from_kill, default=float('nan')):.2f} s); "
              f"while down: {sum(window_totals.values())} attempts, {bypass} succeeded, outcomes {window_totals}; "
              f"redirection rules read {samples} times, changed {rule_changes}")
    return {"scenario": "ztunnel_kill", "passed": passed, "figure": figure, "kills": results,
            "capture": {**checked.summary(), "dropped": capture.dropped, "files": len(capture.files)},
            "probe": all_attempts}


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else float("nan")


def _kill_cycle(mesh: ScenarioMesh, prober: Prober, node: str, pod, rules_before: list[str], cycle: float,
                before_kill: float, scratch: Path, index: int) -> dict:
    cycle_end = time.monotonic() + cycle
    load = Load(mesh, cycle - 2, scratch, name=f"h2load-{index}")
    time.sleep(before_kill)
    component = mesh.components()[f"ztunnel-{node}"]
    old_pid = component["pid"]
    samples = {"n": 0, "changed": 0}
    sampling = threading.Event()

    def sample_rules() -> None:
        while not sampling.is_set():
            samples["n"] += 1
            if mesh.redirection(pod) != rules_before:
                samples["changed"] += 1
            sampling.wait(0.25)

    sampler = threading.Thread(target=sample_rules, daemon=True)
    t_kill = now()
    # As a container dies: the process and any workers at once (the runtime starts each
    # component in a session of its own, so its process group is the component).
    os.killpg(old_pid, signal.SIGKILL)
    sampler.start()
    new_pid = wait_until(lambda: _new_pid(mesh, node, old_pid), timeout=30, interval=0.02)
    t_start = process_start(new_pid) if new_pid else None
    first = wait_until(lambda: prober.first_ok_after(t_kill), timeout=30, interval=0.05)
    time.sleep(1.0)
    sampling.set()
    sampler.join(10)
    # The first h2load's connections died with the ztunnel (item 4 is the restart that keeps
    # them); a second one carries the load for the rest of the minute.
    remaining = cycle_end - time.monotonic() - 2
    second = Load(mesh, remaining, scratch, name=f"h2load-{index}b") if remaining > 3 else None
    first_load = load.wait()
    second_load = second.wait() if second else None
    time.sleep(max(0.0, cycle_end - time.monotonic()))
    down_end = t_start if t_start is not None else (first.t if first else now())
    window = prober.between(t_kill, first.t if first else now())
    result = {
        "node": node, "old_pid": old_pid, "new_pid": new_pid,
        "recovery_from_start_s": round(first.t - t_start, 3) if first and t_start is not None else None,
        "recovery_from_kill_s": round(first.t - t_kill, 3) if first else None,
        "restart_after_kill_s": round(t_start - t_kill, 3) if t_start is not None else None,
        "ok_while_down": sum(1 for a in prober.between(t_kill, down_end) if a.outcome == "ok"),
        "window_outcomes": outcomes(window),
        "rules_samples": samples["n"], "rules_changed": samples["changed"],
        "load_before": first_load, "load_after": second_load,
    }
    log(f"kill {index + 1} ({node}): restart {result['restart_after_kill_s']} s after the kill, first success "
        f"{result['recovery_from_start_s']} s after the new process started; while down {result['window_outcomes']}, "
        f"rules changed {samples['changed']}/{samples['n']}")
    return result


def _new_pid(mesh: ScenarioMesh, node: str, old_pid: int) -> int | None:
    pid = mesh.components().get(f"ztunnel-{node}", {}).get("pid")
    return pid if pid and pid != old_pid else None


# -- item 5: certificate rotation under load ---------------------------------------------------------------
def rotation(minutes: float) -> dict:
    seconds = minutes * 60
    with ScenarioMesh(env={"SECRET_TTL": "2m"}) as mesh, tempfile.TemporaryDirectory(prefix=f"{mesh.prefix}-") as scratch:
        with CertWatch(mesh, interval=1.0) as certs, Prober(mesh) as prober:
            load = Load(mesh, seconds, Path(scratch))
            result_load = load.wait()
        peers = expired_peer_check(mesh)
    renewals = {n: len(certs.serials(n)) - 1 for n in certs.seen}
    lifetimes = sorted({round((_iso(c["expiration"]) - _iso(c["not_before"])).total_seconds())
                        for n in certs.seen for c in certs.serials(n)})
    probe_failures = sum(1 for a in prober.attempts if a.outcome != "ok")
    failed = result_load["failed"] + result_load["non_2xx"]
    expected = int(seconds // 30) - 1
    passed = (failed == 0 and probe_failures == 0 and not certs.expired and peers["expired_refused"]
              and peers["valid_accepted"] and min(renewals.values()) >= expected)
    figure = (f"certificates of 2 min (SECRET_TTL=2m; valid {', '.join(f'{s} s' for s in lifetimes)} with the "
              f"1-minute back-dating) for {seconds / 60:g} min under {RATE:,} req/s: h2load {result_load['done']:,} "
              f"requests, {failed} failed; new connections {len(prober.attempts):,}, {probe_failures} failed; renewals "
              f"seen node1 {renewals[CLIENT_NODE]}, node2 {renewals[SERVER_NODE]} (one per 30 s: ≥ {expected}); expired "
              f"or missing certificate reports {len(certs.expired)}; a certificate expired at the handshake refused: "
              f"{peers['expired_refused']} ({peers['expired_error']}), the same identity's valid one accepted: "
              f"{peers['valid_accepted']}")
    return {"scenario": "rotation", "passed": passed, "figure": figure, "load": result_load,
            "probe": outcomes(prober.attempts), "renewals": renewals, "lifetimes_s": lifetimes,
            "expired_reports": certs.expired[:20], "peers": peers,
            "serials": {n: [(c["serial"], c["not_before"]) for c in certs.serials(n)] for n in certs.seen}}


def expired_peer_check(mesh: ScenarioMesh) -> dict:
    """From the client pod, as its ztunnel would (SO_MARK 0x539 skips the pod's redirection): mutual
    TLS to the server pod's 15008 with a 2-minute certificate of the client's identity that expired
    before it is presented, then with a valid one. The full refusal matrix, with the reason logged,
    is tests/ztunnel/test_netns_identity_attacks.py."""
    from wisp import netns
    from wisp.identity import CertificateAuthority, SpiffeId

    ca = CertificateAuthority.load_cacerts(mesh.paths.state / "ca")
    identity = SpiffeId(ca.trust_domain, NAMESPACE, "client")
    past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=10)
    expired = ca.issue(identity, dt.timedelta(minutes=2), now=past)
    valid = ca.issue(identity, dt.timedelta(minutes=2))
    out = {}
    for name, bundle in (("expired", expired), ("valid", valid)):
        fd = netns.open_netns(netns.path_of(mesh.client.netns))
        try:
            sock = netns.socket_in_netns(fd, socket.socket)
        finally:
            os.close(fd)
        out[name] = _handshake(sock, bundle, mesh.server.ip)
    return {"expired_refused": out["expired"][0] is False, "expired_error": out["expired"][1],
            "valid_accepted": out["valid"][0] is True, "valid_error": out["valid"][1]}


def _handshake(sock: socket.socket, bundle, server_ip: str) -> tuple[bool, str]:
    """(accepted, what happened): accepted once the server's HTTP/2 SETTINGS arrive, which in TLS
    1.3 it sends only after it verified the client's certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.load_verify_locations(cadata=bundle.roots_pem.decode())
    context.set_alpn_protocols(["h2"])
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "client.pem"
        path.write_bytes(bundle.chain_pem + bundle.key_pem)
        context.load_cert_chain(path)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, 0x539)
    sock.settimeout(5)
    try:
        sock.connect((server_ip, 15008))
        tls = context.wrap_socket(sock)
        tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        data = tls.recv(9)
        tls.close()
        return (True, "SETTINGS") if len(data) >= 4 and data[3] == 4 else (False, f"answered {data[:9]!r}")
    except ssl.SSLError as exc:
        return False, exc.reason or str(exc)
    except OSError as exc:
        return False, type(exc).__name__
    finally:
        sock.close()


SCENARIOS = {"controlplane_down": controlplane_down, "ztunnel_kill": ztunnel_kill, "rotation": rotation}
