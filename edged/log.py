"""structlog setup: JSON lines for journald and pipes, a readable console on a TTY.

Also the quiet mode of one-shot commands: at ``warning`` and above, the native runtimes' own
INFO chatter (LiteRT's "Created TensorFlow Lite XNNPACK delegate", TF/absl lines, ORT's
default logger) is kept off stderr too. ``logging_scope`` restores all of it, so a command
run in-process (tests, ``edged bench``) never changes logging for what runs next.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import structlog

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


class _StderrLogger:
    """Writes each line to whatever ``sys.stderr`` is *now*.

    structlog's PrintLogger keeps the stream it was created with; when that stream is later
    replaced and closed (test capture, a daemonising wrapper) every log call would raise.
    """

    def msg(self, message: str) -> None:
        stream = sys.stderr
        try:
            stream.write(message + "\n")
            stream.flush()
        except (ValueError, OSError):  # closed or broken stderr: logging must never kill a job
            pass

    log = debug = info = warning = warn = error = critical = exception = fatal = msg


def _stderr_logger_factory(*_args: object) -> _StderrLogger:
    return _StderrLogger()


_state: dict[str, Any] = {"quiet_native": False}
_native_lock = threading.Lock()
_NATIVE_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2"}
"""Set (unless the user set them) before a runtime is imported, in quiet mode."""


def configure_logging(
    level: str = "info",
    fmt: Literal["auto", "json", "console"] = "auto",
    *,
    auto_console: bool | None = None,
) -> None:
    """Configure structlog; logs go to stderr so stdout stays for results.

    ``auto`` is a console on a TTY and JSON lines otherwise (``auto_console`` overrides the
    TTY test: one-shot commands read better as console lines in a pipe too). Colours only
    ever go to a TTY, whatever the format.
    """
    tty = sys.stderr.isatty()
    use_console = fmt == "console" or (
        fmt == "auto" and (tty if auto_console is None else auto_console)
    )
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer(colors=tty)
        if use_console
        else structlog.processors.JSONRenderer()
    )
    quiet = _LEVELS.get(level, logging.INFO) >= logging.WARNING
    _state["quiet_native"] = quiet
    if quiet:
        for key, value in _NATIVE_ENV.items():
            os.environ.setdefault(key, value)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=_stderr_logger_factory,
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    """A logger bound to a component name (``logger_name=pool``).

    Stays a lazy proxy, so module-level loggers follow ``configure_logging`` even when it runs
    after the import. (``.bind()`` here would freeze structlog's default config: stdout.
    ``logger=`` collides with ``wrap_logger``'s own argument; ``logger_name`` is the other key
    structlog's renderers show as the component.)
    """
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(logger_name=name)
    return logger


def quiet_native() -> bool:
    """True when runtimes should keep their INFO lines to themselves (level >= warning)."""
    return bool(_state["quiet_native"])


@contextmanager
def native_info_filtered() -> Iterator[None]:
    """Around a runtime call that prints INFO lines on fd 2 (LiteRT's delegate creation has
    no switch for it): in quiet mode, capture fd 2 and pass on every line but ``INFO:`` ones.

    Lines other threads write meanwhile are passed on too (late, never lost).
    """
    if not quiet_native():
        yield
        return
    with _native_lock, tempfile.TemporaryFile() as capture:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [
                ln
                for ln in capture.read().splitlines(keepends=True)
                if not ln.startswith(b"INFO: ")
            ]
            if kept:
                os.write(2, b"".join(kept))


@contextmanager
def logging_scope() -> Iterator[None]:
    """Restore the logging configuration (structlog, quiet mode, native env) on exit."""
    config = structlog.get_config()
    state = dict(_state)
    env = {key: os.environ.get(key) for key in _NATIVE_ENV}
    try:
        yield
    finally:
        structlog.configure(**config)
        _state.update(state)
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
