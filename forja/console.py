"""A flow-run process outlives its console: after a broken pipe, its output goes to a file.

A worker starts each flow run as a child process whose stdout and stderr are pipes the worker
reads. When the worker dies (SIGKILL, a lost container) the pipes break, and the next line the flow
run prints raised BrokenPipeError: a run that had done its work ended Crashed, and a process whose
output could not be flushed at exit ended with status 120. `survive_closed_console()` makes
stdout, stderr and the logging handlers that write to them fall back, at their first broken pipe,
to FORJA_HOME/logs/console-<pid>.log (one line there says when and why), and go on.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import IO

GONE = (errno.EPIPE, errno.EBADF, errno.ECONNRESET)


class Survivor(io.TextIOBase):
    """A text stream that writes to `stream` until it breaks, then to the file `fallback`."""

    def __init__(self, stream: IO[str], fallback: Path):
        self.stream, self.fallback = stream, fallback
        self.broken: IO[str] | None = None
        self.lock = threading.Lock()

    def _switch(self, e: BaseException) -> IO[str]:
        with self.lock:
            if self.broken is None:
                self.fallback.parent.mkdir(parents=True, exist_ok=True)
                self.broken = open(self.fallback, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
                self.broken.write(
                    f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} the console of process {os.getpid()} "
                    f"is gone ({e!r}): its output continues here ---\n"
                )
            return self.broken

    def _do(self, op: str, *args):
        if self.broken is None:
            try:
                return getattr(self.stream, op)(*args)
            except (BrokenPipeError, ValueError) as e:  # ValueError: the stream was closed
                target = self._switch(e)
            except OSError as e:
                if e.errno not in GONE:
                    raise
                target = self._switch(e)
        else:
            target = self.broken
        return getattr(target, op)(*args)

    def write(self, s: str) -> int:
        self._do("write", s)
        return len(s)

    def flush(self) -> None:
        self._do("flush")

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return self.broken is None and self.stream.isatty()

    def fileno(self) -> int:
        return (self.broken or self.stream).fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.stream, "encoding", "utf-8")


def survive_closed_console(fallback: Path) -> None:
    """Wrap sys.stdout and sys.stderr (once), and point the logging handlers that write to them
    (Prefect's console handler included) at the wrappers."""
    swapped: dict[int, Survivor] = {}
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is None or isinstance(stream, Survivor):
            continue
        survivor = Survivor(stream, fallback)
        swapped[id(stream)] = survivor
        setattr(sys, name, survivor)
    if not swapped:
        return
    loggers = [logging.getLogger()] + [
        lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    for lg in loggers:
        for h in lg.handlers:
            stream = getattr(h, "stream", None)
            if isinstance(h, logging.StreamHandler) and id(stream) in swapped:
                h.setStream(swapped[id(stream)])
            console = getattr(h, "console", None)  # Prefect's rich console handler
            if console is not None and id(getattr(console, "file", None)) in swapped:
                console.file = swapped[id(console.file)]
