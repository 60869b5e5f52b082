"""Structured logs: JSON lines in the container, readable lines on a terminal.

The standard `logging` calls of every module go through structlog's formatter;
`extra={...}` fields (delivery_id, event, status) become keys of the line.
Every string is masked on the way out, so a secret value never reaches a log.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog
from structlog.typing import EventDict, WrappedLogger

from engine.secrets import Masker


def configure_logging(level: str, fmt: str, masker: Masker) -> None:
    def mask(_logger: WrappedLogger, _name: str, event: EventDict) -> EventDict:
        return {key: masker.mask(value) for key, value in event.items() if key != "color_message"}

    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.stdlib.ExtraAdder(),
            structlog.processors.TimeStamper(fmt="iso", utc=True),
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            mask,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Access logs cost ~10 % of the receiver's throughput and say nothing the metrics do not.
    logging.getLogger("uvicorn.access").disabled = True
    logging.getLogger("hypercorn.access").disabled = True
