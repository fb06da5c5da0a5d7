"""Native log lines (TensorFlow, absl, oneDNN, LiteRT) into a file, Python's output untouched.

TensorFlow 2.21 and LiteRT write ``I0000``/``E0000``/oneDNN/absl lines from C++ straight to
file descriptor 2, past ``TF_CPP_MIN_LOG_LEVEL`` and Python's logging. ``native_log``
points descriptor 2 at a log file for the duration of a command (spawned children inherit
it) and keeps ``sys.stderr`` on the original terminal, so the report and real warnings
stay visible and the rest is kept for whoever needs it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path


def new_log_file(prog: str) -> Path:
    fd, name = tempfile.mkstemp(prefix=f"{prog}-", suffix=".log")
    os.close(fd)
    return Path(name)


def _stderr_is_fd2() -> bool:
    try:
        return sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):
        return False


@contextlib.contextmanager
def native_log(path: Path) -> Iterator[Path]:
    """Descriptor 2 goes to ``path`` (appended) until the block ends; ``sys.stderr`` does not."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    log_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    python_stderr = sys.stderr
    swap = _stderr_is_fd2()
    try:
        if swap:
            sys.stderr = os.fdopen(os.dup(saved), "w", buffering=1,
                                   encoding=python_stderr.encoding, errors="backslashreplace")
        os.dup2(log_fd, 2)
        yield path
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(log_fd)
        if swap:
            sys.stderr.close()
            sys.stderr = python_stderr
