"""Run a function in a child process of its own and get its result back.

For work that needs packages a long-running process should not keep loaded: the detector's fits
import scikit-learn, SciPy and statsmodels (about 95 MiB resident once imported), the models they
return need numpy only. The child is a fresh interpreter (``python -m boxwatch.child``: never a
fork of a process that runs threads, and unlike multiprocessing's ``spawn`` it does not import the
parent's main module again), reads the pickled function and arguments from its standard input,
writes the pickled result to its standard output and exits; what it imported goes with it. Its
standard error is this process' (a traceback lands in the same log); what the function prints
goes there too.

A child that raises, dies without a result (killed, out of memory, a crash in native code), runs
past its deadline or is cancelled raises :class:`ChildFailed` here. The child is always waited
for (killed first where it has not ended), so none is left behind as a zombie.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import resource
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

POLL_SECONDS = 0.5


class ChildFailed(RuntimeError):
    """The child process raised, ended without a result, ran past its deadline, or was cancelled."""


@dataclass
class ChildResult:
    """What the function returned, the child's peak resident memory and its wall time."""

    value: Any
    peak_rss_bytes: int
    seconds: float


def run_in_child(fn: Callable[..., Any], *args: Any, timeout: float | None = None,
                 cancel: threading.Event | None = None, name: str = "child process") -> ChildResult:
    """``fn(*args)`` in a child process; ``fn`` (importable by name), ``args`` and the result must pickle.

    ``timeout`` (seconds) and ``cancel`` (set from another thread) end the child early.
    """
    began = time.monotonic()
    # two pickles: the import path first, so the child can find the function when it reads the second
    payload = pickle.dumps(list(sys.path)) + pickle.dumps((fn, args), protocol=pickle.HIGHEST_PROTOCOL)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # where ``boxwatch`` is found
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    process = subprocess.Popen([sys.executable, "-m", "boxwatch.child"], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, env=env)
    output: list[bytes] = []
    threads = [threading.Thread(target=_write, args=(process.stdin, payload), daemon=True),
               threading.Thread(target=lambda: output.append(process.stdout.read()), daemon=True)]
    del payload
    try:
        for thread in threads:
            thread.start()
        while threads[1].is_alive():
            threads[1].join(POLL_SECONDS)
            if cancel is not None and cancel.is_set():
                raise ChildFailed(f"{name} was cancelled")
            if timeout is not None and time.monotonic() - began > timeout:
                raise ChildFailed(f"{name} ran past its deadline of {timeout:g} s")
        with contextlib.suppress(subprocess.TimeoutExpired):  # the result is in: let the child end by itself
            process.wait(10)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        for thread in threads:
            thread.join()
        process.stdout.close()
    try:
        status, value, peak = pickle.loads(output[0])
    except Exception:
        raise ChildFailed(f"{name} exited with {_exit_reason(process.returncode)} without a result") from None
    if status == "error":
        raise ChildFailed(f"{name} failed: {value}")
    return ChildResult(value, peak, time.monotonic() - began)


def _write(stream, data: bytes) -> None:
    with contextlib.suppress(BrokenPipeError):  # the child is gone: the reader sees its end
        stream.write(data)
    with contextlib.suppress(BrokenPipeError):
        stream.close()


def _main() -> int:
    """The child: read the parent's import path and ``(fn, args)``, write ``(status, result or error, peak RSS)``."""
    result_fd = os.dup(1)
    os.dup2(2, 1)  # what the function prints must not mix with the result
    sys.stdout = sys.stderr
    sys.path[:] = pickle.load(sys.stdin.buffer)
    fn, args = pickle.load(sys.stdin.buffer)
    try:
        message = ("ok", fn(*args))
    except Exception as err:
        traceback.print_exc()
        message = ("error", f"{type(err).__name__}: {err}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    try:
        data = pickle.dumps((*message, peak), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as err:  # a result that does not pickle
        data = pickle.dumps(("error", f"{type(err).__name__}: {err} (pickling the result)", peak))
    with os.fdopen(result_fd, "wb") as out:
        out.write(data)
    return 0


def _exit_reason(code: int | None) -> str:
    if code is not None and code < 0:
        import signal

        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"status {code}"


if __name__ == "__main__":
    sys.exit(_main())
