"""Log lines that a request cannot forge: control characters in logged values are escaped.

A hookInstance or patientId holding CR/LF would otherwise start a new, made-up line in the log. The filter
escapes the arguments of every record of the service's loggers (the message templates are the service's own).
"""

from __future__ import annotations

import logging
import re
from typing import Any

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape_control(text: str) -> str:
    """`text` with every control character (CR, LF, NUL, ESC, C1, line separators) written as an escape."""
    return _CONTROL.sub(
        lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}", text
    )


def _escaped(value: Any) -> Any:
    return escape_control(value) if isinstance(value, str) else value


class EscapeControlCharacters(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, dict):
            record.args = {k: _escaped(v) for k, v in record.args.items()}
        elif record.args:
            record.args = tuple(_escaped(a) for a in record.args)
        return True


_FILTER = EscapeControlCharacters()


def install(namespace: str = "cds_service") -> None:
    """Add the filter to the service's loggers (each module's) and to the root logger's handlers."""
    loggers = [logging.getLogger(namespace)] + [
        logger
        for name, logger in logging.root.manager.loggerDict.items()
        if isinstance(logger, logging.Logger) and (name == namespace or name.startswith(namespace + "."))
    ]
    for logger in loggers:
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    for handler in logging.root.handlers:
        if _FILTER not in handler.filters:
            handler.addFilter(_FILTER)
