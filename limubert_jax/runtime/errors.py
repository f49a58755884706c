"""The error type for bad user input, and how command-line tools report it (their command
lines: `limubert_jax.runtime.cli`)."""

from __future__ import annotations

import errno
import importlib
import logging
import os
import re
import signal
import sys
import threading
from typing import Callable, Sequence

from limubert_jax.runtime.log_filters import quiet_libraries


class LimuBertError(Exception):
    """Bad input (a file, a key, a shape, a value) explained in one line for the user."""


def import_extra(module: str, *, extra: str, reason: str):
    """`module` imported, or a one-line `LimuBertError`: `reason`, then the command that
    installs the package's optional `extra` holding it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise LimuBertError(f"{reason}: pip install 'limubert-jax[{extra}]'") from None


class Terminated(BaseException):
    """SIGTERM, raised like KeyboardInterrupt is for SIGINT, so `finally` blocks (which
    remove staging files) run before the process exits."""


# Set by the SIGTERM handler. The handler runs wherever the main thread is, and its exception
# can vanish there (inside a callback from compiled code): long loops call `check_terminated`
# (seen: `embed` ran to its end and exited 0 after a SIGTERM).
_TERMINATION = threading.Event()


def _raise_terminated(signum, frame):
    # A second SIGTERM must not cut the cleanup short (SIGKILL still can).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _TERMINATION.set()
    raise Terminated()


def check_terminated() -> None:
    """Raises `Terminated` if a SIGTERM arrived whose exception did not end the command; for
    the loops of long work (batches, steps)."""
    if _TERMINATION.is_set():
        raise Terminated()


def run_cli(main: Callable[[Sequence[str] | None], None], argv: Sequence[str] | None = None) -> int:
    """Runs a command-line `main`, turning a `LimuBertError` into one stderr line and exit code 2,
    and so an error of a full, read-only or forbidden destination (`destination_error`).

    SIGINT and SIGTERM end the command through its cleanup (`finally` blocks remove staging
    files) with one stderr line and the shell's conventional status, 128 + the signal
    number: 130 and 143. With `argv` None, `main` is the process's command (a console script
    or `python -m`), and a signal ends the process right after the cleanup.
    """
    quiet_libraries()
    _quiet_destination_noise()
    sys.unraisablehook = _without_closed_loop_noise(sys.unraisablehook)
    # Signal handlers can only be installed from the main thread.
    handle_term = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if handle_term else None
    _TERMINATION.clear()
    try:
        main(argv)
    except LimuBertError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001  (only a destination's errors are taken; others go on)
        line = destination_error(e)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Terminated) as e:
        signum = signal.SIGINT if isinstance(e, KeyboardInterrupt) else signal.SIGTERM
        print(f"error: {'interrupted' if signum == signal.SIGINT else 'terminated'} ({signum.name})", file=sys.stderr)
        if argv is None:
            # The interpreter's teardown can crash (SIGSEGV) after a signal cut an XLA
            # compilation short; everything that needed to run has run.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(128 + signum)
        return 128 + signum
    finally:
        _TERMINATION.clear()
        if handle_term:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
    return 0


# Errors of a destination that cannot take a command's output, by errno and by the words
# libraries that wrap them keep of them in their messages (TensorStore under Orbax: "...
# No space left on device [os_error_code='28']"; TFDS: "Not enough disk space").
_DESTINATION = {
    errno.ENOSPC: ("no space left on the device", ("No space left on device", "Not enough disk space"),
                   "free space there or write elsewhere"),
    errno.EDQUOT: ("disk quota exceeded", ("Disk quota exceeded",), "free space there or write elsewhere"),
    errno.EROFS: ("read-only file system", ("Read-only file system",), "write elsewhere"),
    errno.EACCES: ("permission denied", (), "check its permissions"),  # reading an input can be denied too
    errno.EPERM: ("operation not permitted", (), "check its permissions"),
}
_PATH_IN_MESSAGE = re.compile(r"""(?:file|path|directory|dir)[\s:=]+['"]?(/[^'"\s,;)]+)|['"](/[^'"]+)['"]""", re.I)


def _chain(error: BaseException):
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def destination_error(error: BaseException, *, where: str | os.PathLike | None = None) -> str | None:
    """One line for an error that says the output's destination is full, read-only or
    forbidden, `<path>: no space left on the device (...)`; None for any other error.

    The OSError may be the error itself or its cause or context (Orbax, TensorStore and
    TFDS wrap it, sometimes keeping only its words): the chain is searched for it. The
    line names `where` if given, else the file or directory the error names (a staged
    write names its output). Permission errors count only as OSErrors: their words are
    too common in messages about other things.
    """
    for link in _chain(error):
        if isinstance(link, OSError) and link.errno in _DESTINATION:
            found = link.filename if link.filename is not None else _path_in(str(link))
            return _destination_line(link.errno, where if where is not None else found)
    for link in _chain(error):
        text = str(link)
        for code, (_, words, _) in _DESTINATION.items():
            if any(w in text for w in words):
                return _destination_line(code, where if where is not None else _path_in(text))
    return None


def _path_in(text: str) -> str | None:
    match = _PATH_IN_MESSAGE.search(text)
    return (match.group(1) or match.group(2)) if match else None


def _destination_line(code: int, where) -> str:
    what, _, advice = _DESTINATION[code]
    prefix = f"{os.fspath(where)}: " if where is not None else ""
    return f"{prefix}{what} ({errno.errorcode[code]}; {advice})"


class _DestinationNoise(logging.Filter):
    """Drops what Orbax's writer threads, and asyncio at exit, log about a destination error
    (a traceback per thread and per array: 300 lines for one full disk); the command
    reports it in one line when it waits for the save."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "/orbax/" not in record.pathname and record.name != "asyncio":
            return True
        errors = [Exception(record.getMessage())]
        if record.exc_info and record.exc_info[1] is not None:
            errors.append(record.exc_info[1])
        return all(destination_error(e) is None for e in errors)


def _quiet_destination_noise() -> None:
    for name in ("absl", "asyncio"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DestinationNoise) for f in logger.filters):
            logger.addFilter(_DestinationNoise())


def _redeliver(signum: int, delay: float) -> None:
    """Sends `signum` to this process from another thread after `delay` seconds: sent from
    here, its handler would run at once, inside the hook, and its exception be dropped again."""
    timer = threading.Timer(delay, os.kill, (os.getpid(), signum))
    timer.daemon = True
    timer.start()


def _dropped_signal(value: BaseException) -> int | None:
    """The signal whose handler raised `value`, made ready to be taken again; None for any
    other exception."""
    if isinstance(value, KeyboardInterrupt):
        return signal.SIGINT
    # Our handler set SIG_IGN when it raised: it is put back to take the signal again.
    if isinstance(value, Terminated) and signal.getsignal(signal.SIGTERM) == signal.SIG_IGN:
        signal.signal(signal.SIGTERM, _raise_terminated)
        return signal.SIGTERM
    return None


def _redeliver_from_hook(signum: int) -> None:
    """`_redeliver(signum)` from the unraisable hook. On a loaded machine the hook can still be
    running when the signal comes back; its exception, raised here, is caught and the signal
    sent again, later each time, instead of being dropped a second time."""
    delay = 0.01
    while True:
        try:
            _redeliver(signum, delay)
            return
        except (KeyboardInterrupt, Terminated) as e:
            signum = _dropped_signal(e)
            if signum is None:
                raise
            delay *= 2


def _without_closed_loop_noise(hook):
    """`hook` (sys.unraisablehook) less the "Event loop is closed" RuntimeErrors of TensorStore's
    I/O callbacks when Orbax closed its event loop on a failed read while other reads were in
    flight: dozens of tracebacks burying the one line that names the cause.

    It also redelivers a signal whose exception Python dropped: a signal's handler runs
    wherever the main thread is, and an exception raised in a garbage-collection callback
    (JAX has one) or a `__del__` is printed and ignored, so the command would go on."""
    if getattr(hook, "drops_closed_loop_noise", False):
        return hook

    def unraisablehook(unraisable):
        value = unraisable.exc_value
        if isinstance(value, RuntimeError) and str(value) == "Event loop is closed":
            return
        signum = _dropped_signal(value)
        if signum is not None:
            _redeliver_from_hook(signum)
            return
        hook(unraisable)

    unraisablehook.drops_closed_loop_noise = True
    return unraisablehook


def first_line(error: BaseException, limit: int = 300) -> str:
    """`Type: first line of the message` (libraries put the cause first and details after)."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0][:limit]}" if text else type(error).__name__


def one_line(error: BaseException) -> str:
    """The most specific line of an exception's message (config loaders put it last)."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__
