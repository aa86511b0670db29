"""Packet captures in a test's own network namespaces: tcpdump, live before the block runs.

    with capture(netns, "br0", "tcp and host 10.244.1.5") as seen:
        ...                      # traffic
    seen["summary"]              # tcpdump's one-line summaries, seen["text"] with payloads (-A)

tcpdump says "listening on" once the capture is live; the block starts only then, so nothing
sent in it is missed. The pcap lives in a temporary directory removed afterwards.
"""

from __future__ import annotations

import select
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _run(args: list[str]) -> str:
    return subprocess.run(args, capture_output=True, text=True, timeout=30).stdout


@contextmanager
def capture(netns: str, interface: str, bpf: str = "tcp") -> Iterator[dict]:
    directory = Path(tempfile.mkdtemp(prefix="wisp-test-pcap-"))
    pcap = directory / "capture.pcap"
    process = subprocess.Popen(["ip", "netns", "exec", netns, "tcpdump", "-Z", "root", "--immediate-mode", "-i", interface,
                                "-U", "-s", "0", "-w", str(pcap), bpf], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    box: dict = {}
    try:
        heard, deadline = b"", time.monotonic() + 5
        while b"listening on" not in heard:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or process.poll() is not None:
                raise AssertionError(f"tcpdump is not capturing: {heard.decode(errors='replace')}")
            if select.select([process.stderr], [], [], remaining)[0]:
                heard += process.stderr.read1(4096)
        yield box
    finally:
        time.sleep(0.3)  # packets in flight when the block ends still reach the file
        process.send_signal(signal.SIGINT)
        process.wait(5)
        box["text"] = _run(["tcpdump", "-nn", "-A", "-r", str(pcap)])
        box["summary"] = _run(["tcpdump", "-nn", "-r", str(pcap)])
        shutil.rmtree(directory, ignore_errors=True)
