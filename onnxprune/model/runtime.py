"""The one place ONNX Runtime sessions are made.

Every stage that runs a model (shape evaluation, calibration, compensation, the oracle, timing)
asks :func:`ort_session` with a :class:`SessionPurpose`, so how a session is set up for a purpose
(optimizations, spinning, threads, memory arena) is decided once, here.

Also here: :func:`run_isolated`, which runs a function in a child process, so that a native crash of
ONNX Runtime (a kernel dividing by zero, a segfault) ends that child and reaches the caller as a
:class:`NativeCrash` error, never as the death of the tool.
"""
from __future__ import annotations

import atexit
import os
import pickle
import select
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnxruntime as ort

from onnxprune.errors import OnnxPruneError, first_line
from onnxprune.model import isolated_child
from onnxprune.model.external import has_external, on_disk


@dataclass(frozen=True)
class SessionPurpose:
    """How a session is set up.

    ``optimize``: ORT graph optimizations (off where a model is run op by op: QDQ models, whose fused
    integer kernels round differently, and shape evaluation, which must not fold what it measures).
    ``timing``: fair timing (no idle thread spinning, fixed threads, sequential execution; see
    profiling/timing.py). ``arena``: the CPU memory arena (off for calibration, which streams large
    batches: the arena keeps its high-water mark). ``log_severity``: 3 errors, 4 fatal only.
    """
    optimize: bool = True
    timing: bool = False
    threads: int | None = None
    arena: bool = True
    log_severity: int = 3


def session_options(purpose: SessionPurpose = SessionPurpose()) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.log_severity_level = purpose.log_severity
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if purpose.optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    if not purpose.arena:
        so.enable_cpu_mem_arena = False
    if purpose.timing:
        # idle intra-op threads that spin steal the cores of the other session timed beside this one
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if purpose.threads is not None or purpose.timing:
        so.intra_op_num_threads = int(purpose.threads) if purpose.threads else (os.cpu_count() or 1)
    return so


def ort_session(model: onnx.ModelProto | bytes | str | os.PathLike, purpose: SessionPurpose = SessionPurpose(), *,
                providers: list[str] | None = None, what: str | None = None) -> ort.InferenceSession:
    """An InferenceSession for ``model`` (a ModelProto, serialized bytes or a path).

    ``what`` names the model in the error raised when ORT cannot load it (an OnnxPruneError, so the
    CLI prints one line); without it ORT's own exception propagates (callers that word it themselves).
    A ModelProto with external data (model/external.py) is loaded from a scratch folder holding it
    and links to its data files: ORT maps the files, no copy of the weights passes through here.
    """
    if isinstance(model, onnx.ModelProto) and has_external(model):
        with on_disk(model) as path:
            return ort_session(path, purpose, providers=providers, what=what)
    if isinstance(model, onnx.ModelProto):
        model = model.SerializeToString()
    elif isinstance(model, os.PathLike):
        model = os.fspath(model)
    providers = providers or ["CPUExecutionProvider"]
    if what is None:
        return ort.InferenceSession(model, session_options(purpose), providers=providers)
    try:
        return ort.InferenceSession(model, session_options(purpose), providers=providers)
    except Exception as e:  # ORT's own exception types
        raise OnnxPruneError(f"ONNX Runtime cannot run the {what}: {first_line(e)}") from None


# --- crash isolation ---------------------------------------------------------------------------

class NativeCrash(OnnxPruneError):
    """The child process running an isolated call died (a signal, or an exit without a reply).
    ``reason`` says how, e.g. "killed by SIGFPE (Floating point exception)"; ``context`` what was
    running (the message is "context: reason")."""

    def __init__(self, reason: str, context: str = ""):
        super().__init__(f"{context}: {reason}" if context else reason)
        self.reason, self.context = reason, context

    def __reduce__(self):
        return type(self), (self.reason, self.context)

    def within(self, context: str) -> "NativeCrash":
        """The same crash, said of `context`."""
        return type(self)(self.reason, context)


class IsolatedTimeout(NativeCrash):
    """The isolated call did not answer within its time limit (the child was ended)."""


# the child runs isolated_child.py as a script with this package's root first on sys.path, so it
# imports the same copy of onnxprune as the parent, and only what the called function needs
_BOOT = ("import runpy, sys; sys.path.insert(0, sys.argv[1]); sys.argv = sys.argv[2:]; "
         "runpy.run_path(sys.argv[0], run_name='__main__')")
PACKAGE_ROOT = Path(isolated_child.__file__).resolve().parents[2]


def exit_reason(returncode: int | None) -> str:
    """How a child process ended, in words."""
    if returncode is None:
        return "stopped answering"
    if returncode < 0:
        sig = signal.Signals(-returncode)
        return f"killed by {sig.name} ({signal.strsignal(sig) or 'signal'})"
    return f"exited with code {returncode} without a reply"


class IsolatedWorker:
    """One child process that runs module-level functions on request and stays up between calls
    (its imports and ONNX Runtime's start-up are paid once). After a crash the next call starts a
    new child. Thread-safe; use as a context manager or call close()."""

    def __init__(self):
        self._proc: subprocess.Popen | None = None
        self._send = self._recv = None
        self._lock = threading.Lock()

    def _start(self) -> None:
        c_in, p_out = os.pipe()  # parent -> child
        p_in, c_out = os.pipe()  # child -> parent
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", _BOOT, str(PACKAGE_ROOT), isolated_child.__file__, str(c_in), str(c_out)],
                pass_fds=(c_in, c_out), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, close_fds=True)
        finally:
            os.close(c_in)
            os.close(c_out)
        self._send, self._recv = os.fdopen(p_out, "wb"), os.fdopen(p_in, "rb")

    def call(self, fn, *args, timeout_s: float | None = None, **kwargs):
        """``fn(*args, **kwargs)`` in the child: its result, or its exception raised here; a
        :class:`NativeCrash` if the child dies, an :class:`IsolatedTimeout` after ``timeout_s``."""
        request = pickle.dumps((fn.__module__, _top_level_name(fn), args, kwargs), protocol=pickle.HIGHEST_PROTOCOL)
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._start()
            reply = self._exchange(request, timeout_s)
        status, value = pickle.loads(reply)
        if status == "err":
            raise value
        return value

    def _exchange(self, request: bytes, timeout_s: float | None) -> bytes:
        ready = True
        try:
            isolated_child.write_frame(self._send, request)
            ready = bool(select.select([self._recv], [], [], timeout_s)[0])
            reply = isolated_child.read_frame(self._recv) if ready else None
        except (BrokenPipeError, ConnectionResetError):
            reply = None
        if reply is not None:
            return reply
        if not ready:
            self._proc.kill()
        self._stop()
        if not ready:
            raise IsolatedTimeout(f"no answer within {timeout_s:g} s")
        raise NativeCrash(exit_reason(self._proc.returncode))

    def _stop(self) -> None:
        if self._proc is None:
            return
        for f in (self._send, self._recv):
            try:
                f.close()
            except OSError:
                pass  # the child is gone: a half-sent frame cannot be flushed
        try:
            self._proc.wait(timeout=2.0)  # the child ends at end of file on its pipe
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

    def close(self) -> None:
        with self._lock:
            self._stop()
            self._proc = None

    def __enter__(self) -> "IsolatedWorker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _top_level_name(fn) -> str:
    name = getattr(fn, "__qualname__", "")
    if not name or "." in name or "<" in name:
        raise TypeError(f"run_isolated needs a module-level function, got {fn!r}")
    return name


_shared = IsolatedWorker()
atexit.register(_shared.close)


def run_isolated(fn, *args, timeout_s: float | None = None, **kwargs):
    """``fn(*args, **kwargs)`` in a child process (one kept for the whole run, restarted after a
    crash): a native crash there raises :class:`NativeCrash` here, with how the child died."""
    return _shared.call(fn, *args, timeout_s=timeout_s, **kwargs)
