"""Prometheus counters and histograms for wisp's data plane, without prometheus-client.

Role: the counters a proxy bumps on its hot path, their Prometheus text exposition, and the sum
over a proxy's worker processes. ztunnel's `istio_tcp_*` counters use it (ztunnel/metrics.py);
waypoints are meant to (`istio_requests_total`, request-duration histograms).

Contract
- `Registry.counter(name, documentation, labelnames)` → `Counter`, a family with a fixed tuple
  of label names; `labels(*values)` or `labels(**values)` → its `CounterChild` for those values
  (created once, kept for the registry's life); `child.inc(amount=1)` adds a non-negative
  amount. `Registry.histogram(...)` → `Histogram`, whose children `observe(value)`. A name
  ending in `_total` names the counter's sample, as prometheus-client has it.
- `render(families)` writes text format 0.0.4 (`CONTENT_TYPE`) byte for byte as
  prometheus-client's `generate_latest` does for the same families with created series
  disabled: `# HELP` (backslash and newline escaped), `# TYPE`, one line per sample, labels
  sorted by name, values escaped (backslash, double quote, newline), numbers as Go prints them
  (`format_value`). Families in registration order, children in creation order. No `_created`
  samples: Istio's ztunnel exports none, a sum over processes has no creation time, and
  ztunnel with workers never sent any. tests/observability/test_metrics_exposition.py checks the bytes
  against prometheus-client.
- Worker processes (`WorkerWriter` in each worker, `WorkerDirectory` in the main process) share
  one directory, created by the main process, named to workers in `METRICS_DIR_ENV`. A worker
  owns `<id>.json` (its counts; id = pid and a random part, so a reused pid never overwrites a
  dead worker's file) and listens on `<id>.sock`. It rewrites its file (temporary file, then
  `os.replace`, so a reader sees the old or the new file, never half of one) every flush
  period, when the main process asks over the socket, and when it stops. On a scrape the main
  process asks every worker to write now (1 s each, concurrently; prometheus-client's shared
  memory files showed every count at once, and asking keeps a scrape that fresh), then sums
  its own counts, the files, and the counts of workers that are gone. A worker is gone when its socket refuses
  connections although its file exists (it listens before it writes its first file); its file
  is then final, so the main process folds it into a sum it keeps in memory and deletes it.
  Totals therefore never go down when a worker restarts: every count a scrape showed was in a
  file by then, and files outlive their writers. A worker killed without warning loses only
  what it counted since its last write, which no scrape has shown. A file that cannot be read
  or parsed is logged and skipped (a dead worker's is renamed `*.bad`, so it is logged once);
  it never fails the scrape. A socket path over 108 bytes cannot be bound: that worker is
  then seen as of its last periodic write.
- Blocking: `inc`, `observe` and the copy of the counts a write or scrape starts with run on
  the event loop's thread (the only thread that bumps counters, so no lock and no torn dict).
  Encoding, file writes, directory reads and rendering run in `trio.to_thread`: the directory
  is on tmpfs, where none of it waits for a disk, but the fallback is the temporary directory,
  which may be a disk, and rendering thousands of series is tens of milliseconds of CPU that a
  thread interleaves with the loop instead of holding it.

Measured (python 3.11, 2 shared cores, timeit best of 7): `child.inc(1)` 56-88 ns, against
prometheus-client's 320-460 ns in one process and 0.9-1.25 us in its multiprocess mode (the
workers). VmRSS after `import ztunnel.main`: 34.4 MB, 36.7 MB with prometheus-client (which
brings http.server, wsgiref, urllib and email). 4,000 series of 19 labels: 0.5 ms to copy on
the loop, 29 ms to render (2.8 MB of text), a 370 KB worker file encoded in 5 ms.
docs/architecture.md, "Metrics without prometheus-client", has the decision.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import structlog
import trio

from wisp import peercred

log = structlog.get_logger("wisp.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
METRICS_DIR_ENV = "WISP_METRICS_DIR"
FILE_FORMAT = "wisp-metrics/1"
ASK_TIMEOUT = 1.0  # how long a scrape waits for each worker to write its file

_INF = math.inf
_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
_MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes with the terminating NUL
_WRITE_REQUEST = b"write\n"

COUNTER = "counter"
HISTOGRAM = "histogram"
DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, _INF)


class MetricsError(ValueError):
    """A metric defined or used wrongly, or a worker's file that is not a metrics file."""


# -- text format ---------------------------------------------------------------------------------------------
def format_value(value: float) -> str:
    """A sample value as prometheus-client writes it (its `floatToGoString`): Python's repr, but
    with Go's exponent from seven integer digits on (`2.5e+06` where repr says `2500000.0`);
    `1.0`, `0.25`, `1e-05`, `+Inf`, `-Inf`, `NaN`."""
    value = float(value)
    if value == _INF:
        return "+Inf"
    if value == -_INF:
        return "-Inf"
    if value != value:
        return "NaN"
    text = repr(value)
    dot = text.find(".")
    if value > 0 and dot > 6:
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1:]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return text


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


@dataclass(slots=True)
class FamilySamples:
    """A family's values at one moment, from a registry or a worker's file: the unit that is
    summed and rendered. `values` maps label values (in `labelnames` order) to a counter's
    value, or to a histogram's per-bucket counts (not cumulative) followed by its sum."""

    kind: str
    name: str  # without `_total`
    documentation: str
    labelnames: tuple[str, ...]
    buckets: tuple[float, ...] = ()  # a histogram's upper bounds, the last one +Inf
    values: dict[tuple[str, ...], float | list[float]] = field(default_factory=dict)

    def shape(self) -> tuple:
        return self.kind, self.labelnames, self.buckets


def render(families: Iterable[FamilySamples]) -> bytes:
    """The families in text format 0.0.4 (see the module docstring)."""
    out: list[str] = []
    for family in families:
        name = family.name + "_total" if family.kind == COUNTER else family.name
        out.append(f"# HELP {name} {escape_help(family.documentation)}\n# TYPE {name} {family.kind}\n")
        order = sorted(range(len(family.labelnames)), key=family.labelnames.__getitem__)
        pairs = [(family.labelnames[i], i) for i in order]
        if family.kind == COUNTER:
            for key, value in family.values.items():
                labels = ",".join(f'{n}="{escape_label_value(key[i])}"' for n, i in pairs)
                out.append(f"{name}{{{labels}}} {format_value(value)}\n" if labels
                           else f"{name} {format_value(value)}\n")
        else:
            _render_histogram(family, pairs, out)
    # A lone surrogate (JSON config can carry one) would fail the whole scrape in strict UTF-8.
    return "".join(out).encode("utf-8", "replace")


def _render_histogram(family: FamilySamples, pairs: list[tuple[str, int]], out: list[str]) -> None:
    name = family.name
    bounds = [format_value(b) for b in family.buckets]
    before_le = [(n, i) for n, i in pairs if n < "le"]
    after_le = [(n, i) for n, i in pairs if n > "le"]
    with_sum = family.buckets[0] >= 0  # prometheus-client omits the sum when a bound is negative
    for key, value in family.values.items():
        head = "".join(f'{n}="{escape_label_value(key[i])}",' for n, i in before_le)
        tail = "".join(f',{n}="{escape_label_value(key[i])}"' for n, i in after_le)
        cumulative = 0.0
        for bound, count in zip(bounds, value):
            cumulative += count
            out.append(f'{name}_bucket{{{head}le="{bound}"{tail}}} {format_value(cumulative)}\n')
        labels = ",".join(f'{n}="{escape_label_value(key[i])}"' for n, i in pairs)
        labels = f"{{{labels}}}" if labels else ""
        out.append(f"{name}_count{labels} {format_value(cumulative)}\n")
        if with_sum:
            out.append(f"{name}_sum{labels} {format_value(value[-1])}\n")


def merge(into: dict[str, FamilySamples], families: Iterable[FamilySamples], source: str) -> None:
    """Add `families` to `into`, per family name and label values; `into` never shares a value
    with `families`. A family whose kind, label names or buckets differ from the one already
    there is logged and left out."""
    for family in families:
        target = into.get(family.name)
        if target is None:
            target = into[family.name] = FamilySamples(family.kind, family.name, family.documentation,
                                                       family.labelnames, family.buckets)
        elif target.shape() != family.shape():
            log.warning("metric family differs between processes; this one left out", metric=family.name,
                        source=source, kind=family.kind, labels=list(family.labelnames),
                        expected_kind=target.kind, expected_labels=list(target.labelnames))
            continue
        values = target.values
        if family.kind == COUNTER:
            for key, value in family.values.items():
                values[key] = values.get(key, 0) + value
        else:
            for key, value in family.values.items():
                have = values.get(key)
                values[key] = list(value) if have is None else [a + b for a, b in zip(have, value)]


# -- families and children -----------------------------------------------------------------------------------
class CounterChild:
    """One label set's counter. `value` may be read; only `inc` changes it."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: float = 0

    def inc(self, amount: float = 1) -> None:
        if amount < 0:
            raise MetricsError(f"a counter only goes up; cannot add {amount!r}")
        self.value += amount


class HistogramChild:
    """One label set's histogram: per-bucket counts (not cumulative) and the sum."""

    __slots__ = ("counts", "sum", "_bounds")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0] * len(bounds)
        self.sum: float = 0

    def observe(self, value: float) -> None:
        if value != value:
            raise MetricsError("cannot observe NaN")
        # The first bucket whose upper bound is >= value; the last bound is +Inf.
        self.counts[bisect_left(self._bounds, value)] += 1
        self.sum += value


class _Family:
    kind = ""

    def __init__(self, name: str, documentation: str, labelnames: Iterable[str]) -> None:
        if not _METRIC_NAME.match(name):
            raise MetricsError(f"invalid metric name {name!r}: use letters, digits, '_' and ':', not first a digit")
        self.labelnames = tuple(labelnames)
        for label in self.labelnames:
            if not _LABEL_NAME.match(label) or label.startswith("__"):
                raise MetricsError(f"invalid label name {label!r} for {name}: use letters, digits and '_', "
                                   "not first a digit, not starting with '__'")
        if len(set(self.labelnames)) != len(self.labelnames):
            raise MetricsError(f"{name} repeats a label name: {self.labelnames}")
        self.name = name
        self.documentation = documentation
        self._children: dict[tuple[str, ...], object] = {}
        if not self.labelnames:
            self._children[()] = self._new_child()

    def labels(self, *values: object, **named: object):
        """The child for these label values (positional in `labelnames` order, or by name)."""
        if named:
            if values or set(named) != set(self.labelnames):
                raise MetricsError(f"{self.name} takes labels {self.labelnames}, got "
                                   f"{tuple(named) if not values else 'positional and named values'}")
            key = tuple(str(named[n]) for n in self.labelnames)
        else:
            if len(values) != len(self.labelnames):
                raise MetricsError(f"{self.name} takes {len(self.labelnames)} label values "
                                   f"{self.labelnames}, got {len(values)}")
            key = tuple(map(str, values))
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._new_child()
        return child

    def _new_child(self):
        raise NotImplementedError

    def samples(self) -> FamilySamples:
        raise NotImplementedError


class Counter(_Family):
    """A counter family: `labels(...)` → `CounterChild`; a family without labels has one child,
    `counter.labels()` (or `counter.inc()`), exported as 0 from the start (as prometheus-client does)."""

    kind = COUNTER

    def __init__(self, name: str, documentation: str, labelnames: Iterable[str] = ()) -> None:
        super().__init__(name[:-6] if name.endswith("_total") else name, documentation, labelnames)

    def inc(self, amount: float = 1) -> None:
        """For a counter without labels (one with labels says it needs their values)."""
        self.labels().inc(amount)

    def _new_child(self) -> CounterChild:
        return CounterChild()

    def samples(self) -> FamilySamples:
        values = {key: child.value for key, child in self._children.items()}
        return FamilySamples(COUNTER, self.name, self.documentation, self.labelnames, (), values)


class Histogram(_Family):
    """A histogram family: `labels(...)` → `HistogramChild`. `buckets` are upper bounds in
    increasing order; +Inf is added if missing."""

    kind = HISTOGRAM

    def __init__(self, name: str, documentation: str, labelnames: Iterable[str] = (),
                 buckets: Iterable[float] = DEFAULT_BUCKETS) -> None:
        bounds = [float(b) for b in buckets]
        if bounds != sorted(bounds) or len(set(bounds)) != len(bounds):
            raise MetricsError(f"buckets of {name} must increase: {bounds}")
        if not bounds or bounds[-1] != _INF:
            bounds.append(_INF)
        if len(bounds) < 2:
            raise MetricsError(f"{name} needs at least one bucket below +Inf")
        self.buckets = tuple(bounds)
        labelnames = tuple(labelnames)
        if "le" in labelnames:
            raise MetricsError(f"{name}: 'le' is the bucket label; choose another label name")
        super().__init__(name, documentation, labelnames)

    def observe(self, value: float) -> None:
        """For a histogram without labels (one with labels says it needs their values)."""
        self.labels().observe(value)

    def _new_child(self) -> HistogramChild:
        return HistogramChild(self.buckets)

    def samples(self) -> FamilySamples:
        values = {key: [*child.counts, child.sum] for key, child in self._children.items()}
        return FamilySamples(HISTOGRAM, self.name, self.documentation, self.labelnames, self.buckets, values)


class Registry:
    """The families of one process, in the order they were made."""

    def __init__(self) -> None:
        self._families: dict[str, _Family] = {}

    def counter(self, name: str, documentation: str, labelnames: Iterable[str] = ()) -> Counter:
        return self._add(Counter(name, documentation, labelnames))

    def histogram(self, name: str, documentation: str, labelnames: Iterable[str] = (),
                  buckets: Iterable[float] = DEFAULT_BUCKETS) -> Histogram:
        return self._add(Histogram(name, documentation, labelnames, buckets))

    def _add(self, family):
        if family.name in self._families:
            raise MetricsError(f"metric {family.name} is already registered")
        self._families[family.name] = family
        return family

    def collect(self) -> list[FamilySamples]:
        """A copy of every value now. Call it on the thread that bumps the counters."""
        return [family.samples() for family in self._families.values()]

    def value(self, name: str, **labels: str) -> float:
        """Sum of counter `name`'s (with or without `_total`) values whose labels include
        `labels`; 0 if there is none (for tests, status pages and debugging)."""
        family = self._families.get(name[:-6] if name.endswith("_total") else name)
        if family is None or family.kind != COUNTER:
            return 0.0
        try:
            wanted = [(family.labelnames.index(k), v) for k, v in labels.items()]
        except ValueError:
            return 0.0
        return float(sum(child.value for key, child in family._children.items()
                         if all(key[i] == v for i, v in wanted)))


# -- worker files: encoding --------------------------------------------------------------------------------
def encode(families: Iterable[FamilySamples]) -> bytes:
    """A worker's file: each label set written once, however many families use it."""
    labelsets: dict[tuple[str, ...], int] = {}
    out = []
    for family in families:
        samples = [[labelsets.setdefault(key, len(labelsets)), value] for key, value in family.values.items()]
        out.append({"kind": family.kind, "name": family.name, "help": family.documentation,
                    "labelnames": list(family.labelnames), "buckets": list(family.buckets[:-1]),
                    "samples": samples})
    document = {"format": FILE_FORMAT, "pid": os.getpid(), "labelsets": list(labelsets), "families": out}
    return json.dumps(document, separators=(",", ":")).encode()


def decode(data: bytes) -> list[FamilySamples]:
    """The families of a worker's file; `MetricsError` says what is wrong with one that is not."""
    try:
        document = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise MetricsError(f"not JSON ({exc})") from None
    if not isinstance(document, dict) or document.get("format") != FILE_FORMAT:
        raise MetricsError(f"not a {FILE_FORMAT} document")
    labelsets = document.get("labelsets")
    families = document.get("families")
    if not isinstance(labelsets, list) or not isinstance(families, list):
        raise MetricsError("'labelsets' and 'families' must be lists")
    for labelset in labelsets:
        if not isinstance(labelset, list) or not all(isinstance(v, str) for v in labelset):
            raise MetricsError("a label set is not a list of strings")
    return [_decode_family(family, labelsets) for family in families]


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _decode_family(raw: object, labelsets: list) -> FamilySamples:
    if not isinstance(raw, dict):
        raise MetricsError("a family is not an object")
    kind, name, documentation = raw.get("kind"), raw.get("name"), raw.get("help")
    labelnames, buckets, samples = raw.get("labelnames"), raw.get("buckets"), raw.get("samples")
    if kind not in (COUNTER, HISTOGRAM) or not isinstance(name, str) or not _METRIC_NAME.match(name):
        raise MetricsError(f"family {name!r}: bad kind {kind!r} or name")
    if not isinstance(documentation, str) or not isinstance(labelnames, list) or not all(
            isinstance(n, str) and _LABEL_NAME.match(n) for n in labelnames):
        raise MetricsError(f"family {name}: bad help or label names")
    if not isinstance(buckets, list) or not all(_number(b) for b in buckets) or not isinstance(samples, list):
        raise MetricsError(f"family {name}: bad buckets or samples")
    bounds = (*map(float, buckets), _INF) if kind == HISTOGRAM else ()
    width = len(bounds) + 1
    values: dict[tuple[str, ...], float | list[float]] = {}
    for sample in samples:
        if not (isinstance(sample, list) and len(sample) == 2 and isinstance(sample[0], int)
                and 0 <= sample[0] < len(labelsets) and len(labelsets[sample[0]]) == len(labelnames)):
            raise MetricsError(f"family {name}: a sample does not name a label set of {len(labelnames)} values")
        key, value = tuple(labelsets[sample[0]]), sample[1]
        if kind == COUNTER:
            if not _number(value) or value < 0:
                raise MetricsError(f"family {name}: counter value {value!r} is not a non-negative number")
            values[key] = values.get(key, 0) + value
        else:
            if not (isinstance(value, list) and len(value) == width and all(_number(v) for v in value)):
                raise MetricsError(f"family {name}: histogram value is not {width} numbers")
            have = values.get(key)
            values[key] = list(value) if have is None else [a + b for a, b in zip(have, value)]
    return FamilySamples(kind, name, documentation, tuple(labelnames), bounds, values)


# -- worker files: the worker's side ---------------------------------------------------------------------------
class WorkerWriter:
    """A worker process's counters in a metrics directory (see the module docstring)."""

    def __init__(self, directory: str, registry: Registry, before_write: Callable[[], None] = lambda: None) -> None:
        self.directory = directory
        self.registry = registry
        self.before_write = before_write  # e.g. count the bytes live connections moved
        self.id = f"{os.getpid()}-{os.urandom(4).hex()}"
        self.path = os.path.join(directory, self.id + ".json")
        self.socket_path = os.path.join(directory, self.id + ".sock")
        self.writes = 0
        self._lock = trio.Lock()

    async def run(self, interval: float, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Until cancelled: write now, every `interval` and whenever asked; once more at the end."""
        listener = self._listen()
        try:
            await self.write()
            task_status.started()
            async with trio.open_nursery() as nursery:
                if listener is not None:
                    nursery.start_soon(self._serve, listener)
                while True:
                    await trio.sleep(interval)
                    await self.write()
        finally:
            with trio.CancelScope(shield=True):
                await self.write()
            # Closed only after the last write: a refused connection tells the main process
            # that this file is final.
            if listener is not None:
                listener.close()

    async def write(self) -> bool:
        """Replace our file with the counts now; False (logged) if that failed."""
        async with self._lock:
            self.before_write()
            families = self.registry.collect()
            try:
                await trio.to_thread.run_sync(self._replace, families)
            except OSError as exc:
                log.warning("could not write this worker's metrics file", path=self.path, error=str(exc))
                return False
            self.writes += 1
            return True

    def _replace(self, families: list[FamilySamples]) -> None:
        temporary = os.path.join(self.directory, f".{self.id}.json.tmp")
        with open(temporary, "wb") as file:
            file.write(encode(families))
        os.replace(temporary, self.path)

    def _listen(self) -> trio.socket.SocketType | None:
        if len(os.fsencode(self.socket_path)) > _MAX_SOCKET_PATH:
            log.warning("metrics directory path too long for a unix socket; scrapes see this worker's "
                        "counts as of its last periodic write", path=self.socket_path)
            return None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(self.socket_path)
            sock.listen(16)
        except OSError as exc:
            sock.close()
            log.warning("cannot listen for the main process's metrics requests; scrapes see this worker's "
                        "counts as of its last periodic write", path=self.socket_path, error=str(exc))
            return None
        return trio.socket.from_stdlib_socket(sock)

    async def _serve(self, listener: trio.socket.SocketType) -> None:
        async with trio.open_nursery() as nursery:
            while True:
                conn, _ = await listener.accept()
                # Only our main process asks; it runs as we do.
                if not peercred.admit(conn, peercred.own_uid(), what="worker metrics"):
                    conn.close()
                    continue
                nursery.start_soon(self._answer, conn)

    async def _answer(self, conn: trio.socket.SocketType) -> None:
        with conn:
            try:
                with trio.move_on_after(ASK_TIMEOUT):
                    request = await conn.recv(64)
                    if request == _WRITE_REQUEST:
                        await conn.send(b"ok\n" if await self.write() else b"error writing the file\n")
                    else:
                        await conn.send(b"error: send 'write\\n'\n")
            except OSError:
                pass  # the asker gave up; it uses our last file


# -- worker files: the main process's side ---------------------------------------------------------------------
class WorkerDirectory:
    """The main process's view of its workers' metrics directory (see the module docstring)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._retired: dict[str, FamilySamples] = {}  # the sum of gone workers' final files
        self._folded: set[str] = set()  # their ids, in case a file could not be deleted
        self._lock = threading.Lock()  # two scrapes may read at once

    async def refresh(self, timeout: float = ASK_TIMEOUT) -> set[str]:
        """Ask every worker that listens to write its file now; the ids of those that are gone."""
        try:
            names = await trio.to_thread.run_sync(os.listdir, self.directory)
        except OSError:
            return set()
        gone: set[str] = set()
        files = {name[:-5] for name in names if name.endswith(".json")}
        async with trio.open_nursery() as nursery:
            for name in names:
                if name.endswith(".sock"):
                    nursery.start_soon(self._ask, name[:-5], files, gone, timeout)
        return gone

    async def _ask(self, worker: str, files: set[str], gone: set[str], timeout: float) -> None:
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with sock, trio.move_on_after(timeout) as scope:
            try:
                await sock.connect(os.path.join(self.directory, worker + ".sock"))
            except ConnectionRefusedError:
                # Refused while its file exists: it listened before writing, so it is gone.
                if worker in files:
                    gone.add(worker)
                return
            except OSError as exc:
                log.warning("cannot reach a worker for its metrics; its last file is used", worker=worker,
                            error=str(exc))
                return
            try:
                await sock.send(_WRITE_REQUEST)
                reply = await sock.recv(256)
            except OSError as exc:
                reply = str(exc).encode()
            if reply != b"ok\n":
                log.warning("worker did not write its metrics; its last file is used", worker=worker,
                            reply=reply.decode("utf-8", "replace").strip())
        if scope.cancelled_caught:
            log.warning("worker did not write its metrics in time; its last file is used", worker=worker,
                        timeout=timeout)

    def read(self, gone: set[str] = frozenset()) -> dict[str, FamilySamples]:
        """The sum of every worker's file and of the gone workers' counts; the files of workers
        in `gone` are folded into the latter. Blocks on file I/O: call it from a thread."""
        with self._lock:
            try:
                names = sorted(os.listdir(self.directory))
            except OSError:
                names = []
            live: list[tuple[str, list[FamilySamples]]] = []
            present = set()
            for name in names:
                if not name.endswith(".json"):
                    continue
                worker = name[:-5]
                present.add(worker)
                path = os.path.join(self.directory, name)
                if worker in self._folded:
                    self._remove(worker)
                    continue
                try:
                    with open(path, "rb") as file:
                        families = decode(file.read())
                except (OSError, MetricsError) as exc:
                    log.warning("unreadable worker metrics file; skipped", path=path, error=str(exc))
                    if worker in gone:
                        _quietly(os.replace, path, path + ".bad")
                    continue
                if worker in gone:
                    merge(self._retired, families, path)
                    self._folded.add(worker)
                    self._remove(worker)
                else:
                    live.append((path, families))
            self._folded &= present
            total: dict[str, FamilySamples] = {}
            merge(total, self._retired.values(), "exited workers")
            for path, families in live:
                merge(total, families, path)
            return total

    def _remove(self, worker: str) -> None:
        for suffix in (".json", ".sock"):
            _quietly(os.unlink, os.path.join(self.directory, worker + suffix))


def _quietly(operation: Callable[..., None], *paths: str) -> None:
    try:
        operation(*paths)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("cannot tidy the metrics directory", operation=operation.__name__, paths=list(paths),
                    error=str(exc))


async def scrape(registry: Registry, workers: WorkerDirectory | None) -> bytes:
    """Our registry, plus every worker's counts if `workers`, as text (blocking work in a thread)."""
    own = registry.collect()
    if workers is None:
        return await trio.to_thread.run_sync(render, own)
    gone = await workers.refresh()

    def build() -> bytes:
        total: dict[str, FamilySamples] = {}
        merge(total, own, "this process")
        merge(total, workers.read(gone).values(), "workers")
        return render(total.values())
    return await trio.to_thread.run_sync(build)


def exposition(registry: Registry, workers: WorkerDirectory | None = None) -> bytes:
    """`scrape` without asking the workers to write first, on the calling thread."""
    if workers is None:
        return render(registry.collect())
    total: dict[str, FamilySamples] = {}
    merge(total, registry.collect(), "this process")
    merge(total, workers.read().values(), "workers")
    return render(total.values())
