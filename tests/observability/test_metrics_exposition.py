"""wisp.metrics: the text format byte for byte (checked against prometheus-client), and the sum
over worker processes' files (fresh on a scrape, kept when a worker exits, safe from bad files)."""

from __future__ import annotations

import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile

import prometheus_client
import pytest
import structlog
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from wisp import metrics
from wisp.metrics import MetricsError, Registry, WorkerDirectory, WorkerWriter, decode, encode, render


# -- the text format -----------------------------------------------------------------------------------------
def test_a_counter_is_written_with_help_type_and_total_name_and_labels_sorted():
    registry = Registry()
    opened = registry.counter("istio_tcp_connections_opened_total", "Connections opened", ("reporter", "app"))
    opened.labels("source", "web").inc()
    opened.labels(reporter="destination", app="db").inc(2)
    assert render(registry.collect()) == (
        b"# HELP istio_tcp_connections_opened_total Connections opened\n"
        b"# TYPE istio_tcp_connections_opened_total counter\n"
        b'istio_tcp_connections_opened_total{app="web",reporter="source"} 1.0\n'
        b'istio_tcp_connections_opened_total{app="db",reporter="destination"} 2.0\n'
    )


def test_label_values_escape_backslash_double_quote_and_newline_only():
    registry = Registry()
    registry.counter("c", "h", ("v",)).labels('a\\b"c\nd\té').inc()
    assert render(registry.collect()).decode().splitlines()[2] == 'c_total{v="a\\\\b\\"c\\nd\té"} 1.0'


def test_a_label_value_that_is_not_unicode_text_is_replaced_not_fatal():
    registry = Registry()
    registry.counter("c", "h", ("v",)).labels("bad\ud800name").inc()
    assert render(registry.collect()).splitlines()[2] == b'c_total{v="bad?name"} 1.0'


def test_help_escapes_backslash_and_newline_but_not_quotes():
    registry = Registry()
    registry.counter("c", 'back\\slash\n"quoted"')
    assert render(registry.collect()).splitlines()[0] == b'# HELP c_total back\\\\slash\\n"quoted"'


@pytest.mark.parametrize("value, text", [
    (0, "0.0"), (1, "1.0"), (999999, "999999.0"), (1000000, "1e+06"), (1234567, "1.234567e+06"),
    (2.5e6, "2.5e+06"), (123456.7, "123456.7"), (0.1, "0.1"), (0.0001, "0.0001"), (1e-05, "1e-05"),
    (1e16, "1e+16"), (2**53 + 1, "9.007199254740992e+15"), (math.inf, "+Inf"), (-math.inf, "-Inf"),
    (math.nan, "NaN"), (-2.5e6, "-2500000.0"),
])
def test_values_are_formatted_as_prometheus_client_formats_them(value, text):
    assert metrics.format_value(value) == text
    assert prometheus_client.utils.floatToGoString(value) == text


def test_families_keep_registration_order_and_children_creation_order():
    registry = Registry()
    b = registry.counter("b", "h", ("k",))
    a = registry.counter("a", "h", ("k",))
    a.labels("2").inc()
    b.labels("z").inc()
    b.labels("y").inc()
    a.labels("1").inc()
    lines = [line for line in render(registry.collect()).decode().splitlines() if not line.startswith("#")]
    assert lines == ['b_total{k="z"} 1.0', 'b_total{k="y"} 1.0', 'a_total{k="2"} 1.0', 'a_total{k="1"} 1.0']


def test_a_family_without_children_has_only_help_and_type_and_one_without_labels_starts_at_zero():
    registry = Registry()
    registry.counter("labelled", "h", ("k",))
    registry.counter("plain_total", "p")
    assert render(registry.collect()) == (b"# HELP labelled_total h\n# TYPE labelled_total counter\n"
                                          b"# HELP plain_total p\n# TYPE plain_total counter\nplain_total 0.0\n")


def test_a_histogram_writes_cumulative_buckets_with_le_among_the_sorted_labels_then_count_and_sum():
    registry = Registry()
    duration = registry.histogram("request_ms", "Duration", ("reporter", "code"), buckets=(1, 10))
    for value in (0.5, 1, 7, 100):
        duration.labels("waypoint", "200").observe(value)
    assert render(registry.collect()).decode() == (
        "# HELP request_ms Duration\n# TYPE request_ms histogram\n"
        'request_ms_bucket{code="200",le="1.0",reporter="waypoint"} 2.0\n'
        'request_ms_bucket{code="200",le="10.0",reporter="waypoint"} 3.0\n'
        'request_ms_bucket{code="200",le="+Inf",reporter="waypoint"} 4.0\n'
        'request_ms_count{code="200",reporter="waypoint"} 4.0\n'
        'request_ms_sum{code="200",reporter="waypoint"} 108.5\n'
    )


def test_content_type_is_text_format_0_0_4():
    assert metrics.CONTENT_TYPE == CONTENT_TYPE_PLAIN_0_0_4 == "text/plain; version=0.0.4; charset=utf-8"


@pytest.mark.parametrize("use", [
    lambda r: r.counter("c", "h").labels().inc(-1),
    lambda r: r.counter("c", "h", ("a", "b")).labels("x"),
    lambda r: r.counter("c", "h", ("a",)).labels(b="x"),
    lambda r: r.counter("c", "h", ("a",)).labels("x", a="x"),
    lambda r: r.counter("9c", "h"),
    lambda r: r.counter("c", "h", ("a-b",)),
    lambda r: r.counter("c", "h", ("__a",)),
    lambda r: r.counter("c", "h", ("a", "a")),
    lambda r: (r.counter("c_total", "h"), r.counter("c", "h")),
    lambda r: r.histogram("h", "h", ("le",)),
    lambda r: r.histogram("h", "h", buckets=(2, 1)),
    lambda r: r.histogram("h", "h").labels().observe(math.nan),
], ids=["negative inc", "too few values", "wrong name", "both kinds", "bad metric name", "bad label name",
        "reserved label name", "repeated label", "registered twice", "le label", "unsorted buckets", "NaN"])
def test_misuse_is_a_clear_error(use):
    with pytest.raises(MetricsError):
        use(Registry())


# -- against prometheus-client -------------------------------------------------------------------------------
@pytest.fixture
def no_created():
    # What wisp.metrics leaves out, on purpose (see its docstring); prometheus-client's switch is global.
    prometheus_client.disable_created_metrics()
    yield
    prometheus_client.enable_created_metrics()


def both(build):
    """`build(counter, histogram)` applied to a prometheus-client registry and to ours."""
    theirs = prometheus_client.CollectorRegistry()
    build(lambda *a: prometheus_client.Counter(*a, registry=theirs),
          lambda *a, **k: prometheus_client.Histogram(*a, **k, registry=theirs))
    ours = Registry()
    build(ours.counter, ours.histogram)
    return prometheus_client.generate_latest(theirs), render(ours.collect())


def test_output_is_prometheus_clients_for_the_same_counters_and_histograms(no_created):
    def build(counter, histogram):
        opened = counter("istio_tcp_connections_opened_total", "Connections\\opened\nby \"us\"",
                         ["reporter", "source_workload", "destination_principal"])
        opened.labels("source", 'we"ird\\name\n', "spiffe://cluster.local/ns/a/sa/b").inc(3)
        opened.labels("destination", "", "é ✓").inc(2.5e6)
        received = counter("istio_tcp_received_bytes", "Bytes", ["reporter"])
        received.labels("source").inc(1e16)
        received.labels("destination").inc(0.1)
        counter("unused_total", "never incremented", ["reporter"])
        counter("plain", "no labels").inc(7)
        duration = histogram("istio_request_duration_milliseconds", "ms", ["reporter", "response_code"],
                             buckets=(0.5, 1, 5, 10, 100, 1e7))
        for value in (0.2, 0.5, 3, 99, 5e6, 2e7):
            duration.labels("waypoint", "200").observe(value)
        histogram("below_zero", "a negative bound: no sum", buckets=(-1, 0, 1)).observe(-3)

    theirs, ours = both(build)
    assert ours == theirs


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.text(), st.text(), st.one_of(
    st.integers(min_value=0, max_value=2**60),
    st.floats(min_value=0, allow_nan=False)))),
    st.lists(st.floats(allow_nan=False), max_size=20))
def test_any_label_values_and_amounts_match_prometheus_client(values, observations):
    prometheus_client.disable_created_metrics()
    try:
        def build(counter, histogram):
            family = counter("c_total", "h", ["a", "b"])
            for a, b, amount in values:
                family.labels(a, b).inc(amount)
            observed = histogram("h", "d", ["a"], buckets=(0.001, 1, 1e6))
            for value in observations:
                observed.labels("x").observe(value)
        theirs, ours = both(build)
    finally:
        prometheus_client.enable_created_metrics()
    assert ours == theirs


# -- worker files ----------------------------------------------------------------------------------------------
@pytest.fixture
def directory():
    # Short on purpose: unix socket paths must stay under 108 bytes, and tmp_path can be longer.
    path = tempfile.mkdtemp(prefix="wm-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def counters(**values: float) -> Registry:
    registry = Registry()
    family = registry.counter("opened_total", "Opened", ("reporter",))
    for reporter, value in values.items():
        family.labels(reporter).inc(value)
    return registry


def write(directory: str, worker: str, registry: Registry) -> None:
    with open(os.path.join(directory, worker + ".json"), "wb") as file:
        file.write(encode(registry.collect()))


def gone_socket(directory: str, worker: str) -> None:
    """What a worker that exited leaves: a socket file that nobody listens on."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(os.path.join(directory, worker + ".sock"))
    sock.listen(1)
    sock.close()


def totals(families) -> dict:
    return {(name, key): value for name, family in families.items() for key, value in family.values.items()}


def test_a_file_holds_what_the_registry_renders():
    registry = counters(source=3, destination=2.5)
    registry.histogram("ms", "d", ("code",), buckets=(1, 2)).labels("200").observe(1.5)
    assert render(decode(encode(registry.collect()))) == render(registry.collect())


@pytest.mark.parametrize("data", [
    b"", b"{", b'{"format": "wisp-metrics/1", "labelsets": [], "fam', b"[]", b'{"format": "other"}',
    b'{"format": "wisp-metrics/1", "labelsets": [["a"]], "families": [{"kind": "counter", "name": "c", '
    b'"help": "", "labelnames": ["r"], "buckets": [], "samples": [[0, -1]]}]}',
    b'{"format": "wisp-metrics/1", "labelsets": [["a"]], "families": [{"kind": "counter", "name": "c", '
    b'"help": "", "labelnames": ["r", "s"], "buckets": [], "samples": [[0, 1]]}]}',
    b'{"format": "wisp-metrics/1", "labelsets": [], "families": [{"kind": "counter", "name": "c", '
    b'"help": "", "labelnames": [], "buckets": [], "samples": [[3, 1]]}]}',
    b'{"format": "wisp-metrics/1", "labelsets": [[]], "families": [{"kind": "histogram", "name": "h", '
    b'"help": "", "labelnames": [], "buckets": [1], "samples": [[0, [1, 2]]]}]}',
    b'{"format": "wisp-metrics/1", "labelsets": [], "families": [{"kind": "gauge", "name": "g"}]}',
], ids=["empty", "truncated", "half written", "not an object", "other format", "negative counter",
        "too few label values", "no such label set", "histogram too short", "unknown kind"])
def test_decoding_a_bad_file_says_it_is_bad(data):
    with pytest.raises(MetricsError):
        decode(data)


def test_the_directory_sums_every_workers_file_per_label_set(directory):
    write(directory, "11-aa", counters(source=1, destination=2))
    write(directory, "12-bb", counters(source=10))
    assert totals(WorkerDirectory(directory).read()) == {("opened", ("source",)): 11,
                                                         ("opened", ("destination",)): 2}


def test_a_corrupt_or_half_written_file_is_logged_and_skipped(directory):
    write(directory, "11-aa", counters(source=1))
    with open(os.path.join(directory, "12-bb.json"), "wb") as file:
        file.write(encode(counters(source=5).collect())[:-7])
    with structlog.testing.capture_logs() as logs:
        assert totals(WorkerDirectory(directory).read()) == {("opened", ("source",)): 1}
    (entry,) = [e for e in logs if e["event"] == "unreadable worker metrics file; skipped"]
    assert entry["path"].endswith("12-bb.json") and "not JSON" in entry["error"]


def test_a_family_whose_labels_differ_between_processes_is_left_out_and_logged(directory):
    other = Registry()
    other.counter("opened_total", "Opened", ("reporter", "extra")).labels("source", "x").inc()
    write(directory, "11-aa", other)
    with structlog.testing.capture_logs() as logs:
        total: dict = {}
        metrics.merge(total, counters(source=1).collect(), "this process")
        metrics.merge(total, WorkerDirectory(directory).read().values(), "workers")
    assert totals(total) == {("opened", ("source",)): 1}
    assert [e["metric"] for e in logs if e["event"].startswith("metric family differs")] == ["opened"]


async def test_an_exited_workers_file_still_counts_after_it_is_folded_and_deleted(directory):
    workers = WorkerDirectory(directory)
    write(directory, "11-aa", counters(source=4))
    gone_socket(directory, "11-aa")
    write(directory, "12-bb", counters(source=1))
    gone = await workers.refresh()
    assert gone == {"11-aa"}
    assert totals(workers.read(gone)) == {("opened", ("source",)): 5}
    assert sorted(os.listdir(directory)) == ["12-bb.json"]
    # Its counts stay in the sum; a worker started in its place adds to them.
    write(directory, "13-cc", counters(source=2))
    assert totals(workers.read(await workers.refresh())) == {("opened", ("source",)): 7}


async def test_a_socket_refused_before_the_worker_wrote_a_file_is_not_taken_for_an_exited_worker(directory):
    # A worker binds, then listens, then writes: between the first two it refuses too.
    gone_socket(directory, "11-aa")
    assert await WorkerDirectory(directory).refresh() == set()
    assert os.listdir(directory) == ["11-aa.sock"]


async def test_an_exited_workers_corrupt_file_is_set_aside_so_it_is_logged_once(directory):
    workers = WorkerDirectory(directory)
    with open(os.path.join(directory, "11-aa.json"), "wb") as file:
        file.write(b'{"format": "wisp-metrics/1"')
    gone_socket(directory, "11-aa")
    with structlog.testing.capture_logs() as logs:
        assert workers.read(await workers.refresh()) == {}
        assert workers.read(await workers.refresh()) == {}
    assert len([e for e in logs if e["event"] == "unreadable worker metrics file; skipped"]) == 1
    assert "11-aa.json.bad" in os.listdir(directory)


async def test_a_scrape_asks_each_worker_to_write_so_it_sees_counts_made_just_before(directory):
    own, worker = counters(source=1), counters()
    async with trio.open_nursery() as nursery:
        writer = WorkerWriter(directory, worker)
        await nursery.start(writer.run, 3600)  # the period never comes: only the request writes
        worker._families["opened"].labels("source").inc(41)
        text = await metrics.scrape(own, WorkerDirectory(directory))
        nursery.cancel_scope.cancel()
    assert b'opened_total{reporter="source"} 42.0\n' in text


async def test_a_worker_writes_once_more_when_it_stops_and_the_main_process_keeps_that(directory):
    own, worker = counters(), counters()
    workers = WorkerDirectory(directory)
    async with trio.open_nursery() as nursery:
        writer = WorkerWriter(directory, worker, before_write=lambda: worker._families["opened"]
                              .labels("source").inc(1))  # like the bytes of live connections
        await nursery.start(writer.run, 3600)
        nursery.cancel_scope.cancel()
    assert writer.writes == 2  # at start and at the end
    text = await metrics.scrape(own, workers)
    assert b'opened_total{reporter="source"} 2.0\n' in text
    assert os.listdir(directory) == []  # folded: it refused the request, so it is gone
    assert await metrics.scrape(own, workers) == text


async def test_a_worker_that_does_not_answer_in_time_is_counted_from_its_last_file(directory):
    write(directory, "11-aa", counters(source=3))
    mute = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # listens, never accepts
    mute.bind(os.path.join(directory, "11-aa.sock"))
    mute.listen(1)
    try:
        workers = WorkerDirectory(directory)
        with structlog.testing.capture_logs() as logs, trio.fail_after(5):
            gone = await workers.refresh(timeout=0.2)
        assert gone == set()
        assert totals(workers.read(gone)) == {("opened", ("source",)): 3}
        assert any(e["event"] == "worker did not write its metrics in time; its last file is used" for e in logs)
    finally:
        mute.close()


async def test_a_worker_whose_socket_path_is_too_long_still_writes_its_file(directory):
    deep = os.path.join(directory, "d" * 100)
    os.mkdir(deep)
    registry = counters(source=1)
    with structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            writer = WorkerWriter(deep, registry)
            await nursery.start(writer.run, 3600)
            nursery.cancel_scope.cancel()
    assert any(e["event"].startswith("metrics directory path too long") for e in logs)
    assert totals(WorkerDirectory(deep).read()) == {("opened", ("source",)): 1}


WORKER = """
import sys, trio
from wisp.metrics import Registry, WorkerWriter
registry = Registry()
opened = registry.counter("opened_total", "Opened", ("reporter",)).labels("source")

async def main():
    async with trio.open_nursery() as nursery:
        await nursery.start(WorkerWriter(sys.argv[1], registry).run, 3600)
        opened.inc(int(sys.argv[2]))  # only a scrape's request can write this
        print("ready", flush=True)
        await trio.sleep_forever()

trio.run(main)
"""


async def test_a_killed_worker_process_keeps_what_a_scrape_showed_and_a_new_one_adds_to_it(directory):
    own, workers = counters(source=1), WorkerDirectory(directory)

    async def start(count: int) -> trio.Process:
        process = await trio.lowlevel.open_process([sys.executable, "-c", WORKER, directory, str(count)],
                                                   stdout=subprocess.PIPE)
        said = b""
        try:
            with trio.fail_after(30):
                while not said.endswith(b"\n"):  # a pipe may hand the line over in pieces
                    chunk = await process.stdout.receive_some(64)
                    assert chunk, f"the worker exited before it was ready: {said!r}"
                    said += chunk
            assert said == b"ready\n"
        except BaseException:
            process.kill()  # never leave a worker process behind
            await process.wait()
            raise
        return process

    line = b'opened_total{reporter="source"} %s\n'
    first = await start(10)
    try:
        assert line % b"11.0" in await metrics.scrape(own, workers)
    finally:
        first.kill()  # SIGKILL: no last write
        await first.wait()
    assert line % b"11.0" in await metrics.scrape(own, workers)
    assert os.listdir(directory) == []  # its file is folded into the main process's sum
    second = await start(5)
    try:
        assert line % b"16.0" in await metrics.scrape(own, workers)
    finally:
        second.kill()
        await second.wait()
