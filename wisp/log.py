"""structlog set-up for wisp processes: key-value events, JSON when not on a terminal."""

from __future__ import annotations

import logging
import os
import sys

import structlog


def configure(level: str = "info", json: bool | None = None) -> None:
    """Configure structlog once per process. `json=None` picks JSON unless stderr is a terminal.

    Loggers keep their processors after first use (structlog's cache), which saves a lookup per
    event; `WISP_LOG_CACHE=0` turns that off, for test processes: a cached logger no longer
    sees `structlog.testing.capture_logs`, so what a test captured would depend on which test
    used that logger first.
    """
    if json is None:
        json = not sys.stderr.isatty()
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=os.environ.get("WISP_LOG_CACHE", "1") != "0",
    )
