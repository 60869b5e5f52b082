"""Structured logs: JSON lines in the container, readable lines on a terminal.

The standard `logging` calls of every module go through structlog's formatter;
`extra={...}` fields (delivery_id, stockaj_event, status) become keys of the
line. Every value is masked on the way out, after the exception is formatted
and any object is turned into text, so a secret value never reaches a log:
not in the message, not in an exception's text, not in an object's repr.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, WrappedLogger

from engine.secrets import Masker

_PLAIN = (str, int, float, bool, type(None))


def configure_logging(level: str, fmt: str, masker: Masker, stream: TextIO | None = None) -> None:
    """Send every log record to `stream` (stderr by default), as JSON lines or console lines."""
    out = stream if stream is not None else sys.stderr

    def mask(_logger: WrappedLogger, _name: str, event: EventDict) -> EventDict:
        return {key: masker.mask(_plain(value)) for key, value in event.items() if key != "color_message"}

    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
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
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Access logs cost ~10 % of the receiver's throughput and say nothing the metrics do not.
    logging.getLogger("uvicorn.access").disabled = True
    # httpx logs every request at INFO: one line per action, against one line per delivery outcome.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("hypercorn.access").disabled = True
    # Alembic says "Context impl ..." at every start: only its warnings matter to an operator.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    arq_worker = logging.getLogger("arq.worker")
    if _ARQ_JOB_LINES not in arq_worker.filters:
        arq_worker.addFilter(_ARQ_JOB_LINES)


class _ArqJobLines(logging.Filter):
    """Drops arq's two INFO lines per job, its start and its success, below DEBUG.

    The worker's own line per delivery outcome says more, and carries the delivery id as
    a field; arq's lines would triple the log and repeat the sweep every second. arq's
    warnings, errors, retries and start-up lines pass.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO or logging.getLogger().getEffectiveLevel() <= logging.DEBUG:
            return True
        message = record.msg
        return not (isinstance(message, str) and message.startswith(("%6.2fs \u2192 ", "%6.2fs \u2190 ")))


_ARQ_JOB_LINES = _ArqJobLines()


def _plain(value: Any) -> Any:
    """JSON-ready data: an object becomes its repr here, where it can still be masked.

    Left to the renderer, `extra={"error": exc}` would be repr'd after masking.
    """
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(item) for item in value]
    return repr(value)
