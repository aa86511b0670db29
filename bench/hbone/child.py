"""What every benchmark child process does first: die with its parent, leave Ctrl-C to it."""

from __future__ import annotations

import ctypes
import logging
import os
import signal

import structlog

_PR_SET_PDEATHSIG = 1


def prepare(parent_pid: int) -> None:
    # The parent terminates its children on Ctrl-C and errors; the kernel covers a killed parent.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:
        os._exit(1)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
