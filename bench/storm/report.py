"""The storm benchmark's tables and summary lines, from a run's JSON (phases.py's results).

Pure functions over the saved data, so a saved run prints the same as a fresh one.
"""

from __future__ import annotations

from bench.mesh.report import text_table

MIB = 1024.0
LOGGED_LINES = 8


def per_connection_bytes(result: dict) -> dict[str, float]:
    """{node: bytes of RSS per held connection}, summed over every process of the node's proxy."""
    opened = result["opened"]
    out = {}
    for node, before in result["before"].items():
        grown = sum(p["rss_kib"] for p in result["held"][node]) - sum(p["rss_kib"] for p in before)
        out[node] = grown * 1024 / opened if opened else float("nan")
    return out


def _by_role(processes: list[dict]) -> dict[str, dict]:
    return {p["role"]: p for p in processes}


def concurrent_rows(key: str, result: dict) -> list[list[str]]:
    rows = []
    for node, before in result["before"].items():
        held, after = _by_role(result["held"][node]), _by_role(result["after"][node])
        for p in before:
            h, a = held.get(p["role"], {}), after.get(p["role"], {})
            rows.append([key, node, p["role"], f"{p['fds']:,}", f"{h.get('fds', 0):,}", f"{a.get('fds', 0):,}",
                         f"{p['rss_kib'] / MIB:.1f}", f"{h.get('rss_kib', 0) / MIB:.1f}",
                         f"{a.get('rss_kib', 0) / MIB:.1f}"])
    return rows


CONCURRENT_HEAD = ["contender", "node", "process", "fds before", "fds held", "fds after",
                   "RSS before MiB", "RSS held MiB", "RSS after MiB"]


def growth(result: dict) -> dict[str, dict[str, tuple[int, int, int]]]:
    """{node: {role: (descriptors, of them HBONE sockets, KiB)}} grown from before the first
    batch to after the last."""
    last = result["batches"][-1]["after"]
    out: dict[str, dict[str, tuple[int, int, int]]] = {}
    for node, before in result["before"].items():
        after = _by_role(last.get(node, []))
        out[node] = {p["role"]: (after[p["role"]]["fds"] - p["fds"],
                                 after[p["role"]].get("hbone", 0) - p.get("hbone", 0),
                                 after[p["role"]]["rss_kib"] - p["rss_kib"])
                     for p in before if p["role"] in after}
    return out


def _fds(reading: dict) -> str:
    hbone = reading.get("hbone", 0)
    return f"{reading.get('fds', 0):,}" + (f" ({hbone} HBONE)" if hbone else "")


def paced_rows(key: str, result: dict) -> list[list[str]]:
    """One row per process: descriptors and RSS before, at peak, and after each batch."""
    rows = []
    for node, before in result["before"].items():
        for p in before:
            peak = max((q["rss_kib"] for b in result["batches"] for q in b["peak"].get(node, [])
                        if q["role"] == p["role"]), default=0)
            peak_fds = max((q["fds"] for b in result["batches"] for q in b["peak"].get(node, [])
                            if q["role"] == p["role"]), default=0)
            afters = [_by_role(b["after"].get(node, [])).get(p["role"], {}) for b in result["batches"]]
            rows.append([key, node, p["role"],
                         " → ".join([_fds(p), f"peak {peak_fds:,}", *(_fds(a) for a in afters)]),
                         " → ".join([f"{p['rss_kib'] / MIB:.1f}", f"peak {peak / MIB:.1f}",
                                     *(f"{a.get('rss_kib', 0) / MIB:.1f}" for a in afters)])])
    return rows


PACED_HEAD = ["contender", "node", "process", "fds: before → peak → after each batch",
              "RSS MiB: before → peak → after each batch"]


def paced_line(key: str, result: dict) -> str:
    batches = result["batches"]
    asked = sum(b["h2load"]["asked"] for b in batches)
    ok = sum(b["h2load"]["succeeded"] for b in batches)
    failed = sum(b["h2load"]["failed"] for b in batches)
    rates = ", ".join(f"{b['achieved']['mean']:,.0f}/s ({b['achieved']['low']:,.0f}–{b['achieved']['high']:,.0f})"
                      for b in batches)
    grown = "; ".join(f"{node} {role} {fds:+d} fds" + (f" ({hbone:+d} pooled HBONE)" if hbone else "")
                      + f" {kib / MIB:+.1f} MiB"
                      for node, roles in growth(result).items() for role, (fds, hbone, kib) in roles.items())
    crashed = ", ".join(result["crashed"]) or "none"
    waiting = ", ".join(f"{where} {n:,}" for where, n in batches[-1].get("time_wait", {}).items())
    return (f"{key}: {ok:,} of {asked:,} connections succeeded, {failed:,} failed; asked {result['rate']:,}/s, "
            f"achieved {rates}; TIME_WAIT sockets at the end: {waiting}; grown after settling: {grown}; crashed or restarted: {crashed}")


def concurrent_line(key: str, result: dict) -> str:
    per = ", ".join(f"{node} {b / 1024:.1f} KiB" for node, b in per_connection_bytes(result).items())
    crashed = ", ".join(result["crashed"]) or "none"
    return (f"{key}: {result['opened']:,} of {result['asked']:,} held ({result['failed']} failed, "
            f"{result['at_server']:,} at the server), established in {result['established_seconds']:.1f} s; "
            f"RSS per connection {per}; crashed or restarted: {crashed}")


def peak_rss_kib(result: dict, node: str) -> int:
    """A node's proxy RSS at its peak during a paced phase: the sum of its processes' peaks."""
    return max(sum(q["rss_kib"] for q in b["peak"].get(node, [])) for b in result["batches"])


def ratio_lines(data: dict) -> list[str]:
    """ztunnel ÷ HAProxy, for each phase both ran."""
    phases = data["phases"]
    z, h = phases.get("ztunnel", {}), phases.get("haproxy", {})
    lines = []
    if "concurrent" in z and "concurrent" in h:
        zb, hb = per_connection_bytes(z["concurrent"]), per_connection_bytes(h["concurrent"])
        lines.append("RSS per held connection, ztunnel ÷ HAProxy: " + ", ".join(
            f"{node} {zb[node] / hb[node]:.2f}×" for node in zb if node in hb and hb[node]))
    if "storm" in z and "storm" in h:
        zs, hs = z["storm"], h["storm"]
        peaks = ", ".join(f"{node} {peak_rss_kib(zs, node) / peak_rss_kib(hs, node):.2f}×" for node in zs["before"]
                          if node in hs["before"] and peak_rss_kib(hs, node))
        za, ha = zs["batches"][0]["achieved"]["mean"], hs["batches"][0]["achieved"]["mean"]
        zf, hf = zs["batches"][0]["h2load"]["failed"], hs["batches"][0]["h2load"]["failed"]
        lines.append(f"storm, ztunnel ÷ HAProxy: peak RSS {peaks}; achieved rate {za / ha:.2f}× "
                     f"({za:,.0f} vs {ha:,.0f}/s); failed connections {zf:,} vs {hf:,}")
    return lines


def render(data: dict) -> str:
    out = []
    for phase, title in (("short", "short connections (leak check)"), ("storm", "connection storm"),
                         ("storm_tw_reuse", "connection storm, server pod with tcp_tw_reuse=1"),
                         ("concurrent", "concurrent idle connections")):
        ran = [(key, phases[phase]) for key, phases in data["phases"].items() if phase in phases]
        if not ran:
            continue
        out += ["", f"{title}:"]
        if phase == "concurrent":
            out.append(text_table(CONCURRENT_HEAD, [r for key, res in ran for r in concurrent_rows(key, res)]))
            out += [concurrent_line(key, res) for key, res in ran]
        else:
            out.append(text_table(PACED_HEAD, [r for key, res in ran for r in paced_rows(key, res)]))
            out += [paced_line(key, res) for key, res in ran]
        for key, res in ran:
            out += [f"  {key} logged {e['count']:,} × {e['level']} {e['event']!r}" + (f": {e['reason']}" if e["reason"] else "")
                    for e in res.get("logged", [])[:LOGGED_LINES]]
    ratios = ratio_lines(data)
    if ratios:
        out += ["", *ratios]
    return "\n".join(out)
