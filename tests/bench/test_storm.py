"""bench/storm: h2load's pacing and summary, the achieved rate, /proc readings and the leak figures."""

from __future__ import annotations

import os
import socket

import pytest

from bench.mesh.loadgen import LoadError
from bench.storm import pacing, probe, report

H2LOAD_RATE_OUT = """\
starting benchmark...
spawning thread #0: 10000 total client(s). 10000 total requests
progress: 100% of clients started
finished in 5.04s, 1200.40 req/s, 178.21KB/s
requests: 10000 total, 9800 started, 9700 done, 6051 succeeded, 3649 failed, 3600 errored, 49 timeout
status codes: 6051 2xx, 0 3xx, 0 4xx, 0 5xx
"""

SNMP = """\
Ip: Forwarding DefaultTTL InReceives
Ip: 1 64 1000
Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails EstabResets CurrEstab
Tcp: 1 200 120000 -1 212490 207594 4318 162438 0
Udp: InDatagrams NoPorts
Udp: 5 0
"""


def test_pace_spreads_2000_per_second_over_10_ms_batches_of_20():
    paced = pacing.pace(2000, 60_000)
    assert (paced.per_period, paced.period_ms) == (20, 10)
    assert paced.seconds == 30


def test_pace_lengthens_the_period_until_a_batch_is_a_whole_number_of_connections():
    assert (pacing.pace(150, 1500).per_period, pacing.pace(150, 1500).period_ms) == (3, 20)
    assert (pacing.pace(7, 70).per_period, pacing.pace(7, 70).period_ms) == (7, 1000)


def test_pace_refuses_a_rate_or_count_below_one():
    with pytest.raises(ValueError, match="at least 1"):
        pacing.pace(0, 100)
    with pytest.raises(ValueError, match="at least 1"):
        pacing.pace(100, 0)


def test_h2load_opens_one_connection_per_request_at_the_paced_rate():
    argv = pacing.h2load_argv("http://10.0.0.1:8080/", pacing.pace(2000, 60_000))
    assert argv[argv.index("-c") + 1] == argv[argv.index("-n") + 1] == "60000"
    assert argv[argv.index("-r") + 1] == "20"
    assert argv[argv.index("--rate-period") + 1] == "10ms"
    assert "--h1" in argv and "-D" not in argv  # -D and -r are exclusive in h2load


def test_h2load_summary_counts_every_connection_not_succeeded_as_failed():
    parsed = pacing.parse_h2load(H2LOAD_RATE_OUT)
    assert parsed["asked"] == 10_000
    assert parsed["succeeded"] == 6051
    # 3,649 failed plus 300 never done (started or not) when h2load gave up.
    assert parsed["failed"] == 3949
    assert parsed["seconds"] == pytest.approx(5.04)


def test_h2load_rate_run_without_a_summary_is_an_error_that_shows_its_output():
    with pytest.raises(LoadError, match="no such host"):
        pacing.parse_h2load("no such host\n")


def _counter(rates: list[float], step: float = 0.5, start: float = 100.0) -> list[tuple[float, int]]:
    """ActiveOpens samples every `step` s growing at each given rate per second in turn."""
    samples, count, t = [(start, 5000)], 5000.0, start
    for rate in rates:
        t += step
        count += rate * step
        samples.append((t, int(count)))
    return samples


def test_achieved_rate_is_read_from_the_counter_inside_the_paced_window():
    samples = _counter([2000] * 10 + [0] * 6)  # 5 s paced, then 3 s of tail
    seen = pacing.achieved(samples, 100.0, 105.0)
    assert seen.mean == pytest.approx(2000)
    assert seen.opened == 10_000
    assert (seen.low, seen.high) == (pytest.approx(2000), pytest.approx(2000))


def test_achieved_rate_shows_a_stall_as_its_slowest_second():
    samples = _counter([2000, 2000, 500, 500, 2000, 2000])
    seen = pacing.achieved(samples, 100.0, 103.0)
    assert seen.low == pytest.approx(500)
    assert seen.high == pytest.approx(2000)
    assert seen.mean == pytest.approx(1500)


def test_achieved_rate_of_a_window_shorter_than_two_samples_uses_the_samples_around_it():
    samples = [(100.0, 0), (100.6, 300), (101.2, 500)]
    seen = pacing.achieved(samples, 100.1, 100.9)
    assert seen.opened == 500
    assert seen.mean == pytest.approx(500 / 1.2)


def test_achieved_rate_without_samples_is_an_error():
    with pytest.raises(ValueError, match="fewer than two"):
        pacing.achieved([(100.0, 0)], 99.0, 99.5)


def test_snmp_tcp_counters_are_read_by_name():
    counters = probe.parse_snmp(SNMP)
    assert counters["ActiveOpens"] == 212490
    assert counters["AttemptFails"] == 4318


def test_snmp_text_without_tcp_lines_is_refused():
    with pytest.raises(ValueError, match="Tcp"):
        probe.parse_snmp("Ip: a b\nIp: 1 2\n")


def test_process_roles_name_the_root_and_each_ztunnel_worker():
    assert probe.role_of(["python", "wisp-ztunnel", "--node", "node1"], root=True) == "main"
    assert probe.role_of(["python", "wisp-ztunnel", "--worker-index", "3", "--worker-fds", "4,5"], root=False) == "worker 3"
    assert probe.role_of(["/usr/sbin/haproxy", "-db"], root=False) == "haproxy"


def test_reading_a_process_tree_counts_its_open_descriptors():
    before = probe.read_tree(os.getpid())[0]
    with socket.socket(), socket.socket():
        during = probe.read_tree(os.getpid())[0]
    assert before.role == "main" and before.pid == os.getpid()
    assert during.fds == before.fds + 2
    assert during.rss_kib > 0


def test_tcp_table_maps_each_socket_inode_to_its_ports():
    table = (
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
        "   0: 0A0101F4:3AA8 0A0201F4:1F90 01 00000000:00000000 00:00000000 00000000     0        0 4242 1 0 20 4 30 10 -1\n"
        "   1: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 0 1 0 100 0 0 10 0\n"
    )
    assert probe.parse_tcp_table(table) == {4242: (0x3AA8, 8080)}


def test_a_process_reading_counts_its_sockets_on_the_hbone_port():
    with socket.socket() as listener, socket.socket() as unrelated:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        unrelated.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        with socket.create_connection(listener.getsockname()):
            # The kernel's table as if the listener's port were HBONE's: the listener (local
            # port) and the client end (remote port) count, the unrelated socket does not.
            ports = {inode: tuple(probe.HBONE_PORT if p == port else p for p in pair)
                     for inode, pair in probe.tcp_ports([os.getpid()]).items()}
            reading = probe.read_process(os.getpid(), "main", ports=ports)
            accepted, _ = listener.accept()
            with accepted:
                ports = {inode: tuple(probe.HBONE_PORT if p == port else p for p in pair)
                         for inode, pair in probe.tcp_ports([os.getpid()]).items()}
                after_accept = probe.read_process(os.getpid(), "main", ports=ports)
    assert reading.hbone == 2
    assert after_accept.hbone == 3


def _proc(role: str, fds: int, rss_kib: int, pid: int = 1) -> dict:
    return {"pid": pid, "role": role, "rss_kib": rss_kib, "hwm_kib": rss_kib, "fds": fds}


def test_per_connection_bytes_sum_every_process_of_a_node():
    result = {"opened": 1000,
              "before": {"node1": [_proc("main", 20, 30_000), _proc("worker 1", 20, 30_000, 2)]},
              "held": {"node1": [_proc("main", 520, 31_000), _proc("worker 1", 520, 32_000, 2)]}}
    assert report.per_connection_bytes(result) == {"node1": pytest.approx(3000 * 1024 / 1000)}


def test_growth_compares_each_process_before_the_first_batch_with_after_the_last():
    pooled = dict(_proc("main", 37, 36_000), hbone=9)
    result = {"before": {"node2": [_proc("main", 27, 34_000), _proc("worker 1", 19, 34_000, 2)]},
              "batches": [{"after": {"node2": [_proc("main", 30, 35_000), _proc("worker 1", 19, 34_000, 2)]}},
                          {"after": {"node2": [pooled, _proc("worker 1", 19, 34_100, 2)]}}]}
    assert report.growth(result) == {"node2": {"main": (10, 9, 2000), "worker 1": (0, 0, 100)}}


def test_logged_warnings_are_counted_by_event_and_reason_and_other_lines_skipped():
    from bench.storm import events
    lines = [
        '{"event": "outbound connect failed", "level": "warning", "error": "HBONE stream refused"}',
        '{"event": "outbound connect failed", "level": "warning", "error": "HBONE stream refused"}',
        '{"event": "outbound connect failed", "level": "warning", "error": "timed out"}',
        '{"event": "connection opened", "level": "info"}',
        "Traceback (most recent call last):",
    ]
    assert events.count(lines) == {("warning", "outbound connect failed", "HBONE stream refused"): 2,
                                   ("warning", "outbound connect failed", "timed out"): 1}


def test_log_marks_count_only_what_was_written_after_them(tmp_path):
    from bench.storm import events
    log = tmp_path / "ztunnel-node1.log"
    log.write_text('{"event": "old", "level": "error"}\n')
    marks = events.Marks([log, tmp_path / "missing.log"])
    with open(log, "a") as f:
        f.write('{"event": "new", "level": "error", "reason": "boom"}\n')
    assert marks.since() == [{"level": "error", "event": "new", "reason": "boom", "count": 1}]
