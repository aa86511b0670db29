"""bench/mesh: reading the load generators' output, /proc sums, percentiles, ratios and targets."""

from __future__ import annotations

import json
import math
import os
import time

import pytest

from bench.mesh import loadgen, pinning, procstat, profile, report
from bench.mesh.runner import Sample

H2LOAD_OUT = """\
starting benchmark...
spawning thread #0: 4 total client(s). Timing-based test with 0s of warm-up time and 10s of main duration for measurements.
Warm-up phase is over for thread #0.
Main benchmark duration is over for thread #0. Stopping all clients.
Stopped all clients for thread #0

finished in 10.00s, 1000.00 req/s, 1.17MB/s
requests: 10000 total, 10000 started, 10000 done, 9998 succeeded, 2 failed, 0 errored, 0 timeout
status codes: 9998 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 11.72MB (12290000) total, 1.32MB (1380000) headers (space savings 0.00%), 9.77MB (10240000) data
"""

WRK_OUT = """\
Running 5s test @ http://10.244.2.10:8080/
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   276.58us  312.12us  12.01ms   96.12%
    Req/Sec    57.72k     3.21k   61.02k    80.00%
  Latency Distribution
     50%  196.00us
     75%  258.00us
     90%  329.00us
     99%    1.24ms
  288600 requests in 5.00s, 335.49MB read
  Socket errors: connect 0, read 3, write 0, timeout 1
  Non-2xx or 3xx responses: 2
Requests/sec:  57716.49
Transfer/sec:     67.09MB
"""


def test_h2load_summary_counts_only_succeeded_requests_and_sums_failures():
    parsed = loadgen.parse_h2load(H2LOAD_OUT)
    assert parsed["requests"] == 9998
    assert parsed["failed"] == 2
    assert parsed["seconds"] == 10.0
    assert parsed["req_s"] == 1000.0


def test_h2load_summary_in_milliseconds_is_converted_to_seconds():
    parsed = loadgen.parse_h2load(H2LOAD_OUT.replace("finished in 10.00s", "finished in 500.25ms"))
    assert parsed["seconds"] == pytest.approx(0.50025)


def test_h2load_without_summary_is_an_error_that_shows_its_output():
    with pytest.raises(loadgen.LoadError, match="connect refused"):
        loadgen.parse_h2load("connect refused\n")


def test_h2load_log_keeps_latencies_of_2xx_requests_only():
    log = "1700000000000000\t200\t512\n1700000000001000\t503\t90000\n1700000000002000\t204\t700\nbroken\n"
    assert loadgen.parse_h2load_log(log) == [512.0, 700.0]


def test_h2load_rate_is_split_over_connections():
    argv = loadgen.h2load_argv("http://x/", rate=1000, connections=4, seconds=30, log_file="/tmp/l")
    assert argv[argv.index("--rps") + 1] == "250"
    assert "--h1" in argv


def test_h2load_rate_that_does_not_split_evenly_is_refused():
    with pytest.raises(ValueError):
        loadgen.h2load_argv("http://x/", rate=1000, connections=3, seconds=30, log_file="/tmp/l")


def test_wrk_report_gives_rate_errors_and_percentiles_in_microseconds():
    parsed = loadgen.parse_wrk(WRK_OUT)
    assert parsed["requests"] == 288600
    assert parsed["seconds"] == 5.0
    assert parsed["req_s"] == 57716.49
    assert parsed["socket_errors"] == 4
    assert parsed["non_2xx"] == 2
    assert parsed["p50_us"] == pytest.approx(196.0)
    assert parsed["p99_us"] == pytest.approx(1240.0)


def test_wrk_connection_close_sends_the_header():
    argv = loadgen.wrk_argv("http://x/", connections=16, seconds=5, close=True)
    assert argv[argv.index("-H") + 1] == "Connection: close"
    assert "-H" not in loadgen.wrk_argv("http://x/", connections=16, seconds=5)


def test_iperf3_json_gives_received_gigabits():
    out = json.dumps({"end": {"sum_received": {"bits_per_second": 9.5e9, "bytes": 11875000000, "seconds": 10.0},
                              "sum_sent": {"retransmits": 7}}})
    assert loadgen.parse_iperf3(out) == {"gbps": 9.5, "bytes": 11875000000, "seconds": 10.0, "retransmits": 7}


def test_iperf3_error_is_reported():
    with pytest.raises(loadgen.LoadError, match="unable to connect"):
        loadgen.parse_iperf3(json.dumps({"error": "unable to connect to server"}))


def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(1, 1001)]  # 1..1000
    assert loadgen.percentile(values, 50) == 500
    assert loadgen.percentile(values, 99) == 990
    assert loadgen.percentile(values, 99.9) == 999
    assert loadgen.percentile([7.0], 99.9) == 7.0
    assert math.isnan(loadgen.percentile([], 50))


def test_stat_fields_are_counted_after_a_command_name_with_spaces_and_parentheses():
    # pid (comm) state ppid ... utime(14) stime(15)
    text = "42 (wisp (ztunnel) x) S 7 42 42 0 -1 4194304 100 0 0 0 250 50 0 0 20 0 3 0 100 1000 200\n"
    assert procstat.parse_stat(text) == (7, 300.0)


def test_status_gives_rss_and_peak_and_zero_for_kernel_threads():
    text = "Name:\tztunnel\nVmHWM:\t   51200 kB\nVmRSS:\t   40960 kB\nThreads:\t3\n"
    assert procstat.parse_status(text) == (40960, 51200)
    assert procstat.parse_status("Name:\tkthreadd\nThreads:\t1\n") == (0, 0)


def test_descendants_include_grandchildren_but_not_siblings():
    parents = {1: 0, 10: 1, 11: 10, 12: 10, 13: 11, 20: 1, 21: 20}
    assert procstat.descendants(10, parents) == [10, 11, 12, 13]


def test_tree_usage_sums_cpu_and_memory_over_the_process_tree(tmp_path):
    def proc(pid, ppid, utime, stime, rss, hwm):
        d = tmp_path / str(pid)
        d.mkdir()
        (d / "stat").write_text(f"{pid} (p) S {ppid} 1 1 0 -1 0 0 0 0 0 {utime} {stime} 0 0 20 0 1 0 1 1 1\n")
        (d / "status").write_text(f"VmHWM:\t{hwm} kB\nVmRSS:\t{rss} kB\n")

    proc(100, 1, 100, 50, 1000, 2000)
    proc(101, 100, 30, 20, 500, 600)  # a worker
    proc(200, 1, 999, 999, 9999, 9999)  # unrelated
    (tmp_path / "self").mkdir()
    usage = procstat.tree_usage(100, tmp_path)
    assert usage.cpu_s == pytest.approx(200 / procstat.TICKS)
    assert (usage.rss_kib, usage.hwm_kib, usage.processes) == (1500, 2600, 2)
    with pytest.raises(ProcessLookupError):
        procstat.tree_usage(300, tmp_path)


def _fixed(contender, round_, p50_us, p99_us, requests=10_000, cpu=(0.5, 0.4), rss_kib=(20_000, 30_000)):
    proxies = {f"node{i + 1}": {"cpu_s": c, "rss_peak_kib": r} for i, (c, r) in enumerate(zip(cpu, rss_kib))}
    result = {"requests": requests, "seconds": 10.0, "p50_us": p50_us, "p90_us": p50_us * 2,
              "p99_us": p99_us, "p999_us": p99_us * 2}
    return Sample(round_, contender, "fixed", result, proxies if contender != "direct" else {}, wall=10.0)


def test_added_latency_is_taken_against_direct_in_the_same_round_then_medianed():
    samples = [
        _fixed("direct", 0, 200, 1000), _fixed("ztunnel", 0, 500, 1500),  # +0.3 / +0.5 ms
        _fixed("direct", 1, 400, 3000), _fixed("ztunnel", 1, 600, 3200),  # +0.2 / +0.2 ms
        _fixed("direct", 2, 300, 1000), _fixed("ztunnel", 2, 700, 1900),  # +0.4 / +0.9 ms
    ]
    summary = report.summarise(samples, ("direct", "ztunnel"))
    assert summary["ztunnel"]["added_p50_ms"]["median"] == pytest.approx(0.3)
    assert summary["ztunnel"]["added_p99_ms"]["median"] == pytest.approx(0.5)
    assert summary["direct"]["added_p99_ms"]["median"] == 0


def test_cpu_per_thousand_requests_and_peak_rss_are_per_proxy():
    summary = report.summarise([_fixed("ztunnel", 0, 500, 1500, requests=10_000, cpu=(0.5, 0.8))], ("ztunnel",))
    assert summary["ztunnel"]["cpu_per_1k_node1"]["median"] == pytest.approx(0.05)
    assert summary["ztunnel"]["cpu_per_1k_node2"]["median"] == pytest.approx(0.08)
    assert summary["ztunnel"]["rss_peak_mb_node2"]["median"] == pytest.approx(30_000 * 1024 / 1e6)


def test_idle_memory_per_connection_is_the_rss_growth_divided_by_connections():
    sample = Sample(0, "ztunnel", "idle", {"opened": 10_000}, {
        "node1": {"rss_before_kib": 40_000, "rss_after_kib": 140_000},
        "node2": {"rss_before_kib": 40_000, "rss_after_kib": 90_000}}, wall=30.0)
    values = report.values(sample)
    assert values["idle_kb_node1"] == pytest.approx(100_000 * 1024 / 1000 / 10_000)  # 10.24 KB
    assert values["idle_kb_node2"] == pytest.approx(5.12)


def _rates(contender, saturation, connect, bulk1):
    return [Sample(0, contender, "saturation", {"requests": saturation * 10, "seconds": 10.0}, {}, wall=10),
            Sample(0, contender, "connect", {"requests": connect * 10, "seconds": 10.0}, {}, wall=10),
            Sample(0, contender, "bulk1", {"gbps": bulk1}, {}, wall=10)]


def test_ratios_divide_by_each_earlier_anchor_and_skip_missing_values():
    samples = _rates("direct", 40_000, 8_000, 10.0) + _rates("haproxy", 20_000, 2_000, 4.0) + \
        _rates("ztunnel", 5_000, 1_000, 2.0)
    summary = report.summarise(samples, ("direct", "haproxy", "ztunnel"))
    assert report.ratio_pairs(("direct", "haproxy", "ztunnel"), ("direct", "haproxy")) == [
        ("haproxy", "direct"), ("ztunnel", "direct"), ("ztunnel", "haproxy")]
    assert report.ratio(summary, "ztunnel", "haproxy", "saturation_rps") == pytest.approx(0.25)
    assert report.ratio(summary, "ztunnel", "direct", "bulk1_gbps") == pytest.approx(0.2)
    assert math.isnan(report.ratio(summary, "ztunnel", "direct", "cpu_per_1k_node1"))
    negative = {"haproxy": {"added_p90_ms": {"median": -0.12}}, "ztunnel": {"added_p90_ms": {"median": 0.05}}}
    assert math.isnan(report.ratio(negative, "ztunnel", "haproxy", "added_p90_ms"))


def test_targets_pass_or_miss_on_the_worst_node_and_on_ratios_to_the_anchor():
    samples = _rates("haproxy", 20_000, 2_000, 4.0) + _rates("ztunnel", 20_000, 3_000, 4.4) + [
        _fixed("direct", 0, 200, 1000), _fixed("ztunnel", 0, 500, 1400, cpu=(0.5, 1.2))]
    results = {r["target"]: r for r in report.evaluate(report.summarise(samples, ("direct", "haproxy", "ztunnel")))}
    assert results["saturation req/s ≥ 1.0× HAProxy pair"]["pass"]
    assert results["bulk Gb/s, 1 connection ≥ 0.9× HAProxy pair"]["value"] == pytest.approx(1.1)
    assert not results["new connections/s ≥ 2× HAProxy pair"]["pass"]  # 1.5×
    assert results["added p99 at 1,000 rps ≤ 0.5 ms"]["pass"]  # +0.4 ms
    cpu = results["≤ 0.10 vCPU per 1,000 rps per ztunnel"]
    assert cpu["value"] == pytest.approx(0.12) and not cpu["pass"]  # node2 misses though node1 passes
    # No idle or bulk8 samples: those targets are left out, not failed.
    assert not any("idle" in name or "8 connections" in name for name in results)


# -- fixed-rate runs, spread and trust ----------------------------------------------------------------
def _run(contender, round_, run, p50_us, p99_us):
    sample = _fixed(contender, round_, p50_us, p99_us)
    sample.run = run
    return sample


def test_added_latency_pairs_each_fixed_run_with_directs_run_of_the_same_index():
    samples = [
        _run("direct", 0, 0, 200, 1000), _run("ztunnel", 0, 0, 500, 1200),  # +0.2 ms p99
        _run("direct", 0, 1, 200, 3000), _run("ztunnel", 0, 1, 500, 3100),  # +0.1 ms p99
        _run("direct", 0, 2, 200, 2000), _run("ztunnel", 0, 2, 500, 2900),  # +0.9 ms p99
    ]
    summary = report.summarise(samples, ("direct", "ztunnel"))
    added = summary["ztunnel"]["added_p99_ms"]
    assert added["rounds"] == pytest.approx([0.2, 0.1, 0.9])
    assert (added["median"], added["min"], added["max"]) == pytest.approx((0.2, 0.1, 0.9))


def test_other_measures_keep_one_value_per_round_beside_several_fixed_runs():
    samples = [_run("ztunnel", 0, run, 500, 1500) for run in range(3)] + _rates("ztunnel", 5_000, 1_000, 2.0)
    summary = report.summarise(samples, ("ztunnel",))
    assert len(summary["ztunnel"]["p99_ms"]["rounds"]) == 3
    assert summary["ztunnel"]["saturation_rps"]["rounds"] == [5_000]


def test_latency_cells_show_their_range_and_other_cells_do_not():
    samples = [_run("direct", 0, run, 200, p99) for run, p99 in enumerate((900, 1000, 1400))]
    samples += _rates("direct", 40_000, 8_000, 10.0)
    summary = report.summarise(samples, ("direct",))
    head, rows = report.table(summary, {"direct": "direct"}, ("direct",), {"direct": "direct"})
    cells = {row[0]: row[2] for row in rows}
    assert cells["p99 at 1,000 rps"] == "1.000 (0.900–1.400)"
    assert cells["saturation, 16 keep-alive connections"] == "40,000"
    # direct's added latency is zero in every run: no range to show.
    assert cells["added p99 over direct"] == "0.000"


def test_trust_line_gives_directs_own_p99_range_as_the_noise_floor():
    samples = [_run("direct", 0, run, p50, p99) for run, (p50, p99) in
               enumerate(((200, 900), (250, 1000), (210, 1400)))]
    line = report.latency_trust(report.summarise(samples, ("direct",)))
    assert "0.900–1.400 ms" in line
    assert "differences in p99 below 0.50 ms" in line
    assert "in p50 below 0.05 ms" in line


def test_trust_line_says_no_spread_was_measured_with_one_run():
    line = report.latency_trust(report.summarise([_fixed("direct", 0, 200, 900)], ("direct",)))
    assert "no spread was measured" in line


def test_added_p99_target_carries_directs_noise():
    samples = [_run("direct", 0, 0, 200, 1000), _run("ztunnel", 0, 0, 500, 1300),
               _run("direct", 0, 1, 200, 1800), _run("ztunnel", 0, 1, 500, 2000)]
    results = report.evaluate(report.summarise(samples, ("direct", "ztunnel")))
    (added,) = [r for r in results if r["metric"] == "added_p99_ms"]
    assert added["noise"] == pytest.approx(0.8)
    assert report.target_rows(results, {"ztunnel": "z"})[1][0][3] == "PASS (noise 0.80 ms)"


# -- engine shapes ------------------------------------------------------------------------------------
def test_every_engine_is_held_to_every_target_and_gets_a_row_of_ratios_to_haproxy():
    samples = _rates("haproxy", 20_000, 2_000, 4.0) + _rates("ztunnel[trio]", 5_000, 1_000, 2.0) + \
        _rates("ztunnel[epoll]", 20_000, 5_000, 4.4)
    summary = report.summarise(samples, ("haproxy", "ztunnel[trio]", "ztunnel[epoll]"))
    saturation = [r for r in report.evaluate(summary) if r["metric"] == "saturation_rps"]
    assert [(r["contender"], r["pass"]) for r in saturation] == [("ztunnel[trio]", False), ("ztunnel[epoll]", True)]
    names = {"haproxy": "HAProxy", "ztunnel[trio]": "wisp ztunnel[trio] pair", "ztunnel[epoll]": "wisp ztunnel[epoll] pair"}
    head, rows = report.engine_table(summary, names)
    assert [row[0] for row in rows] == ["wisp ztunnel[trio] pair", "wisp ztunnel[epoll] pair"]
    assert rows[0][head.index("saturation ÷ haproxy")] == "0.25×"
    assert rows[1][head.index("new conn/s ÷ haproxy")] == "2.50×"
    assert rows[1][head.index("bulk 8 conn ÷ haproxy")] == "–"  # not measured


def test_wisp_contenders_are_ztunnel_with_or_without_an_engine():
    assert report.is_wisp("ztunnel") and report.is_wisp("ztunnel[trio-epoll]")
    assert not report.is_wisp("haproxy") and not report.is_wisp("direct")


def test_engine_contenders_are_named_for_their_engine_and_set_the_variable():
    from bench.mesh import contenders

    made = contenders.make(("direct", "haproxy", "ztunnel"), ("trio", None))
    assert [c.key for c in made] == ["direct", "haproxy", "ztunnel[trio]", "ztunnel"]
    assert made[2].mesh_env() == {"WISP_ZTUNNEL_ENGINE": "trio"}
    assert made[3].mesh_env() == {} and made[0].mesh_env() == {}
    with pytest.raises(ValueError, match="unknown ztunnel engine 'uring'"):
        contenders.WispZtunnel("uring")


def test_process_environment_is_split_on_nul_and_first_equals_sign():
    from bench.mesh.contenders import parse_environ

    raw = b"PATH=/usr/bin\0WISP_ZTUNNEL_ENGINE=trio-epoll\0X=a=b\0\0broken\0"
    assert parse_environ(raw) == {"PATH": "/usr/bin", "WISP_ZTUNNEL_ENGINE": "trio-epoll", "X": "a=b"}


def test_engines_option_refuses_unknown_or_repeated_names():
    from bench.mesh.__main__ import parse_args

    assert parse_args(["--engines", "epoll,trio"]).engines == ("epoll", "trio")
    assert parse_args([]).engines in (("",), (os.environ.get("WISP_ZTUNNEL_ENGINE"),))
    for bad in ("uring", "trio,trio"):
        with pytest.raises(SystemExit):
            parse_args(["--engines", bad])


# -- core layouts -------------------------------------------------------------------------------------
def test_sides_layout_puts_each_proxy_with_its_side():
    sides = pinning.layout("sides")
    placement = pinning.placement(sides, [2, 5], server=[40, 41], proxies={"node1": 10, "node2": 20})
    assert placement == {5: [40, 41, 20], 2: [10]}
    assert pinning.generator_prefix(sides, [2, 5]) == ["taskset", "-c", "2"]


def test_no_layout_pins_nothing():
    none = pinning.layout("none")
    assert not none.pinned
    assert pinning.placement(none, [0, 1], server=[40], proxies={"node1": 10}) == {}
    assert pinning.generator_prefix(none, [0, 1]) == []


def test_rt_suffix_keeps_the_cores_and_runs_the_generator_under_chrt():
    rt = pinning.layout("sides+rt")
    assert rt.realtime and (rt.generator, rt.server, rt.node1, rt.node2) == (0, 1, 0, 1)
    assert pinning.generator_prefix(rt, [0, 1]) == ["chrt", "-f", "1", "taskset", "-c", "0"]
    assert not pinning.layout("sides").realtime
    with pytest.raises(pinning.PinError, match="pins nothing"):
        pinning.layout("none+rt")


def test_a_layout_needing_more_cpus_than_usable_is_an_error():
    with pytest.raises(pinning.PinError, match="needs 2 CPUs"):
        pinning.placement(pinning.layout("sides"), [0], server=[40], proxies={})
    with pytest.raises(pinning.PinError, match="unknown layout"):
        pinning.layout("diagonal")


def test_pinned_moves_every_thread_of_a_tree_and_restores_it():
    import subprocess
    import sys

    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs two CPUs")
    child = subprocess.Popen([sys.executable, "-c",
                              "import threading, time; threading.Thread(target=time.sleep, args=(30,)).start(); "
                              "time.sleep(30)"])
    try:
        deadline = time.monotonic() + 10
        while len(os.listdir(f"/proc/{child.pid}/task")) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        tids = [int(t) for t in os.listdir(f"/proc/{child.pid}/task")]
        assert len(tids) == 2
        with pinning.Pinned({cpus[1]: [child.pid]}, realtime=True):
            assert all(os.sched_getaffinity(t) == {cpus[1]} for t in tids)
            assert all(os.sched_getscheduler(t) == os.SCHED_FIFO for t in tids)
        assert all(os.sched_getaffinity(t) == set(cpus) for t in tids)
        assert all(os.sched_getscheduler(t) == os.SCHED_OTHER for t in tids)
    finally:
        child.kill()
        child.wait()


# -- py-spy -------------------------------------------------------------------------------------------
PYSPY_RAW = """\
0x7f3b67c4524a (libc.so.6);<module> (ztunnel.py:1);run (trio/_run.py:10);recv (hbone.py:20);read (ssl.py:30) 6
0x7f3b67c4524a (libc.so.6);<module> (ztunnel.py:1);run (trio/_run.py:10);recv (hbone.py:20) 2
0x7f3b67c4524a (libc.so.6);<module> (ztunnel.py:1);run (trio/_run.py:10);send (hbone.py:40);0x7f3b6749c34c (libcrypto.so.3) 3
0x7f3b67c4524a (libc.so.6);<module> (ztunnel.py:1);run (trio/_run.py:10);send (hbone.py:40);0x7f3b6749c433 (libcrypto.so.3) 1
0x7f3b67c4524a (libc.so.6);<module> (ztunnel.py:1);run (trio/_run.py:10);run (trio/_run.py:10) 4
0x7f3b67c4524a (libc.so.6);<module> (ztunnel.py:1);run (trio/_run.py:10);get_events (trio/_io_epoll.py:238);epoll_wait (libc.so.6) 9
"""


def test_pyspy_raw_output_is_read_as_stacks_with_native_addresses_counted_per_library():
    stacks = profile.parse_raw(PYSPY_RAW)
    assert sum(stacks.values()) == 25
    libcrypto = ("[libc.so.6]", "<module> (ztunnel.py:1)", "run (trio/_run.py:10)", "send (hbone.py:40)",
                 "[libcrypto.so.3]")
    assert stacks[libcrypto] == 4


def test_pyspy_stacks_that_end_in_a_wait_are_idle_not_work():
    busy, idle = profile.split_idle(profile.parse_raw(PYSPY_RAW))
    assert idle == 9 and sum(busy.values()) == 16
    assert not any(stack[-1].startswith("epoll_wait") for stack in busy)
    assert not profile.is_wait(("run (trio/_run.py:10)", "write (libc.so.6)"))


def test_unnamed_libc_under_trios_idle_threads_is_a_wait_and_elsewhere_is_work():
    idle_worker = ("[libc.so.6]", "_bootstrap (threading.py:1002)",
                   "WorkerThread._work (trio/_core/_thread_cache.py:209)", "[libc.so.6]")
    idle_io = ("[libc.so.6]", "EpollIOManager.get_events (trio/_core/_io_epoll.py:238)", "[libc.so.6]")
    idle_lock = ("[libc.so.6]", "WorkerThread._work (trio/_core/_thread_cache.py:209)",
                 "lock_PyThread_acquire_lock (libpython3.11.so.1.0)", "PyThread_acquire_lock_timed (libpython3.11.so.1.0)",
                 "[libc.so.6]")
    assert profile.is_wait(idle_lock)
    busy_worker = ("[libc.so.6]", "WorkerThread._work (trio/_core/_thread_cache.py:213)",
                   "trim (runtime.py:90)", "[libc.so.6]")
    assert profile.is_wait(idle_worker) and profile.is_wait(idle_io)
    assert not profile.is_wait(busy_worker)
    assert not profile.is_wait(("[libc.so.6]", "send (hbone.py:40)", "[libc.so.6]"))


def test_pyspy_own_time_is_the_innermost_frame_and_total_counts_a_frame_once_per_stack():
    stacks, _ = profile.split_idle(profile.parse_raw(PYSPY_RAW))
    by_own = profile.top(stacks, "own", 3)
    assert [(e.frame, e.own) for e in by_own] == [
        ("read (ssl.py:30)", 6), ("[libcrypto.so.3]", 4), ("run (trio/_run.py:10)", 4)]
    by_total = {e.frame: e.total for e in profile.top(stacks, "total", 20)}
    # Recursion (run inside run) is counted once per stack, so no frame exceeds all samples.
    assert by_total["run (trio/_run.py:10)"] == 16
    assert by_total["recv (hbone.py:20)"] == 8
    assert by_total["send (hbone.py:40)"] == 4


def test_pyspy_summary_keeps_the_top_entries_both_ways_and_renders_shares():
    summary = profile.summary(profile.parse_raw(PYSPY_RAW), rate=100, n=2)
    assert summary["samples"] == 16 and summary["idle_samples"] == 9
    assert summary["seconds"] == pytest.approx(0.16)
    assert [e["frame"] for e in summary["own"]] == ["read (ssl.py:30)", "[libcrypto.so.3]"]
    assert len(summary["total"]) == 2
    (title, head, rows), _ = report.profile_tables(summary)
    assert title == "by own time" and rows[0] == ["read (ssl.py:30)", "37.5%", "37.5%"]


def test_pyspy_output_that_is_not_stacks_is_an_error_naming_the_line():
    with pytest.raises(profile.ProfileError, match="line 2"):
        profile.parse_raw("a (b.py:1) 3\nnot a stack line\n")
    with pytest.raises(ValueError):
        profile.top(profile.parse_raw(PYSPY_RAW), "self")


def test_old_results_without_runs_or_engines_still_load():
    old = {"round": 0, "contender": "direct", "measure": "fixed", "result": {}, "proxies": {}, "wall": 1.0}
    assert Sample(**old).run == 0


PERF_SCRIPT = """\
   4242 
\tffffffff81a0 nf_conntrack_in ([kernel.kallsyms])
\tffffffff81b0 nf_hook_slow ([kernel.kallsyms])
\tffffffff81c0 tcp_sendmsg ([kernel.kallsyms])
\tffffffff81d0 __sys_sendto ([kernel.kallsyms])
\t    7f00 __send (/usr/lib/x86_64-linux-gnu/libc.so.6)

   4242 
\tffffffff81e0 _copy_from_user ([kernel.kallsyms])
\tffffffff81c0 tcp_sendmsg_locked ([kernel.kallsyms])
\tffffffff81d0 __sys_sendto ([kernel.kallsyms])

   4242 
\tffffffff81f0 do_syscall_64 ([kernel.kallsyms])

   4242 
\t   1af670 _PyEval_EvalFrameDefault (/root/.pyenv/versions/3.11.7/lib/libpython3.11.so.1.0)

   4242 
\t    31337 EVP_EncryptUpdate (/usr/lib/x86_64-linux-gnu/libcrypto.so.3)

   4242 
\t    31337 [unknown] ([unknown])
"""


def test_perf_samples_go_to_the_innermost_layer_that_names_them():
    from bench.mesh import layers

    counts = layers.parse_script(PERF_SCRIPT)
    # The conntrack frame is innermost, so the netfilter hook under tcp_sendmsg counts there; a
    # copy inside tcp_sendmsg is the copy's (a system call's work), a bare entry a system call.
    assert counts == {"kernel: netfilter": 1, "kernel: system calls": 2, "proxy code (CPython)": 1,
                      "OpenSSL": 1, "other user code": 1}


def test_perf_layers_are_microseconds_per_unit_of_work_per_proxy():
    from collections import Counter

    from bench.mesh import layers

    # 999 samples at 999 Hz are one CPU-second: over 1,000 requests and two proxies, 500 µs each.
    figures = layers.per_unit(Counter({"OpenSSL": 999, "kernel: TCP/IP": 1998}), units=1000, proxies=2,
                              frequency=999)
    assert figures == pytest.approx({"OpenSSL": 500.0, "kernel: TCP/IP": 1000.0, "total": 1500.0})
    with pytest.raises(ValueError):
        layers.per_unit(Counter({"OpenSSL": 1}), units=0, proxies=2)
