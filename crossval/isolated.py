"""Foreign engines in child processes: a crash, an abort or a hang ends one call with an error, never the run.

`Isolated("module:callable", kwargs)` spawns a process that builds `callable(**kwargs)` and then answers method calls
on the object it built, one at a time, over a pipe. The child's file descriptors 1 and 2 go to a log file, so the
last lines an engine printed before it died (ggml prints a backtrace on abort) can be quoted. The child ends when
the pipe closes and dies with its parent (PR_SET_PDEATHSIG on Linux), so a killed harness leaves no orphans.
crossval runs its reference engines this way, and bench runs every engine this way.
"""

from __future__ import annotations

import ctypes
import importlib
import multiprocessing as mp
import os
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

from crossval.backends import BackendError

TAIL_LINES = 12
PR_SET_PDEATHSIG = 1
CLOSE = "__close__"


class ChildError(BackendError):
    """A child engine died (signal or exit status), hung past its timeout, or raised; `tail` is what it printed."""

    def __init__(self, message: str, tail: str = "", signal_name: str | None = None):
        super().__init__(message)
        self.tail = tail
        self.signal_name = signal_name


def _die_with_parent() -> None:
    """Ask Linux to send SIGKILL to this process when its parent dies (no-op elsewhere)."""
    try:
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def _resolve(factory: str):
    """The callable named by 'package.module:attribute'."""
    module, _, attr = factory.partition(":")
    return getattr(importlib.import_module(module), attr)


def _error_text(exc: BaseException) -> str:
    """`Type: message`, then the traceback's last frames (for exceptions that are not the project's own)."""
    head = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, BackendError):
        return head
    frames = traceback.format_exception(exc)[-4:-1]
    return head + "\n" + "".join(frames).rstrip()


def _child_main(conn, factory: str, kwargs: dict, log_path: str) -> None:
    """The child: redirect output to the log, build the object, then serve (method, args, kwargs) until closed."""
    _die_with_parent()
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    try:
        obj = _resolve(factory)(**kwargs)
    except Exception as exc:  # noqa: BLE001 - every failure goes to the parent, which raises it
        conn.send((False, _error_text(exc)))
        return
    conn.send((True, None))
    while True:
        try:
            method, args, kw = conn.recv()
        except (EOFError, OSError):
            return
        if method == CLOSE:
            getattr(obj, "close", lambda: None)()
            conn.send((True, None))
            return
        try:
            reply = (True, getattr(obj, method)(*args, **kw))
        except Exception as exc:  # noqa: BLE001
            reply = (False, _error_text(exc))
        sys.stdout.flush()
        sys.stderr.flush()
        conn.send(reply)


def log_tail(path: Path, n: int = TAIL_LINES) -> str:
    """The last n non-empty lines of a log file ('' when there is none)."""
    try:
        data = path.read_bytes()[-64_000:]
    except OSError:
        return ""
    lines = [line for line in data.decode("utf-8", "replace").splitlines() if line.strip()]
    return "\n".join(lines[-n:])


class Isolated:
    """The parent's handle on one child process holding one object; `call` forwards a method call to it."""

    def __init__(self, factory: str, kwargs: dict, *, name: str, timeout: float):
        self.name = name
        self.timeout = timeout
        handle, path = tempfile.mkstemp(prefix="bitnet-ref-child-", suffix=".log")
        os.close(handle)
        self.log_path = Path(path)
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_child_main, args=(child, factory, kwargs, path), daemon=True)
        self.process.start()
        child.close()
        try:
            self._reply("start", timeout)
        except BaseException:
            self.close()
            raise

    def call(self, method: str, *args, timeout: float | None = None, **kwargs):
        """Run obj.method(*args, **kwargs) in the child and return its result; ChildError when it fails."""
        if not self.process.is_alive():
            raise ChildError(f"{self.name} is not running (exit status {self.process.exitcode})")
        try:
            self.conn.send((method, args, kwargs))
        except (BrokenPipeError, OSError):
            self._died(method)
        return self._reply(method, timeout or self.timeout)

    def _reply(self, what: str, timeout: float):
        """The child's answer to the last request, or ChildError when it died, went silent, or raised."""
        deadline = time.monotonic() + timeout
        while not self.conn.poll(0.1):
            if not self.process.is_alive():
                self._died(what)
            if time.monotonic() > deadline:
                self.kill()
                raise ChildError(f"{self.name} gave no answer to {what} within {timeout:.0f} s (killed)",
                                 log_tail(self.log_path))
        try:
            ok, value = self.conn.recv()
        except (EOFError, OSError):
            self._died(what)
        if not ok:
            raise ChildError(f"{self.name} {what} failed: {value.splitlines()[0]}", value)
        return value

    def _died(self, what: str):
        """Raise the ChildError of a child that ended: the signal or exit status, and its last output."""
        self.process.join(timeout=10)
        code = self.process.exitcode
        name = None
        if code is not None and code < 0:
            name = signal.Signals(-code).name if -code in signal.valid_signals() else f"signal {-code}"
            how = f"died with {name}"
        else:
            how = f"exited with status {code}"
        tail = log_tail(self.log_path)
        last = tail.splitlines()[-1] if tail else "no output"
        raise ChildError(f"{self.name} {how} during {what} (last output: {last})", tail, name)

    def kill(self) -> None:
        """End the child at once."""
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=10)

    def close(self) -> None:
        """Ask the child to release its object and end; kill it if it does not; remove the log."""
        if self.process.is_alive():
            try:
                self.conn.send((CLOSE, (), {}))
                self.conn.poll(30)
            except (BrokenPipeError, OSError):
                pass
        self.conn.close()
        self.process.join(timeout=10)
        self.kill()
        self.log_path.unlink(missing_ok=True)


class IsolatedBackend:
    """A crossval Backend whose engine lives in a child process: its crash or hang is a ChildError for one call."""

    def __init__(self, factory: str, kwargs: dict, *, name: str, timeout: float):
        self.name = name
        self.child = Isolated(factory, kwargs, name=name, timeout=timeout)

    def tokenize(self, text: str, add_bos: bool) -> list[int]:
        """The engine's token ids."""
        return self.child.call("tokenize", text, add_bos)

    def eval(self, tokens: list[int]):
        """Logits of every position."""
        return self.child.call("eval", list(tokens))

    def capture(self, tokens: list[int], points) -> dict:
        """Activations at the requested points."""
        return self.child.call("capture", list(tokens), list(points))

    def greedy(self, tokens: list[int], n_new: int):
        """Greedy continuation and its logits."""
        return self.child.call("greedy", list(tokens), n_new)

    def describe(self) -> dict:
        """The engine's own description."""
        return self.child.call("describe")

    def close(self) -> None:
        """End the child."""
        self.child.close()
