"""Structured logs: one JSON object per line, with the fields a log pipeline can index."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web import BaseRequest, StreamResponse

_RESERVED = set(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class MalformedRequestFilter(logging.Filter):
    """aiohttp logs a request it cannot parse with its parser's message, which quotes the offending raw line:
    a request line carrying ``?apiKey=KEY`` or an ``x-api-key: KEY`` header line, so a key would reach the log.
    Keep the fact (and the error's class), drop the raw bytes and the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.msg = f"{record.getMessage()}: malformed HTTP request ({type(exc).__name__}, {exc.code})"
            record.args = None
            record.exc_info = None
            record.exc_text = None
            if record.levelno > logging.WARNING:  # a client's bad bytes are not a server error
                record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


_MALFORMED_FILTER = MalformedRequestFilter()


def configure_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.INFO)
    server_logger = logging.getLogger("aiohttp.server")
    if _MALFORMED_FILTER not in server_logger.filters:
        server_logger.addFilter(_MALFORMED_FILTER)


class AccessLogger(AbstractAccessLogger):
    """One line per request with the path only: query strings may carry ``apiKey``, which is never logged."""

    def log(self, request: BaseRequest, response: StreamResponse, elapsed: float) -> None:
        self.logger.info(
            "request",
            extra={
                "method": request.method,
                "path": request.path,
                "status": response.status,
                "ms": round(elapsed * 1000, 3),
                "remote": request.remote,
                "at": time.time(),
            },
        )
