"""The child process of model/runtime.py's :class:`IsolatedWorker`: it runs what may crash natively
(ONNX Runtime dividing by zero inside a kernel, a segfault) so that the crash kills this process,
not the tool.

It is started as a script (``runpy``), not imported through the package: its own functions (the
first run of a user's model, :func:`probe_run`) then need only numpy and onnxruntime, and the
child is ready in a fraction of a second. Other functions are imported by module name on first use.

Protocol, on two pipes the parent passes by fd number: length-prefixed pickles. Request
``(module, name, args, kwargs)``; reply ``("ok", value)`` or ``("err", exception)``.
"""
from __future__ import annotations

import importlib
import os
import pickle
import signal
import struct
import sys

HEADER = struct.Struct("<Q")
THIS_MODULE = "onnxprune.model.isolated_child"


def read_frame(f) -> bytes | None:
    """One message, or None at end of file (the other side is gone)."""
    head = f.read(HEADER.size)
    if len(head) < HEADER.size:
        return None
    (n,) = HEADER.unpack(head)
    data = f.read(n)
    return data if len(data) == n else None


def write_frame(f, data: bytes) -> None:
    f.write(HEADER.pack(len(data)))
    f.write(data)
    f.flush()


def probe_run(model: bytes, feeds: dict, providers: list[str] | None = None) -> list[str]:
    """Load and run a model once (ORT defaults, optimizations on); returns its output names."""
    # imported here: the parent pickles only this module's name, and the child needs nothing heavier
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.log_severity_level = 4
    sess = ort.InferenceSession(model, so, providers=providers or ["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    sess.run(None, {k: feeds[k] for k in names if k in feeds})
    return [o.name for o in sess.get_outputs()]


def _resolve(module: str, name: str):
    if module == THIS_MODULE:
        return globals()[name]
    return getattr(importlib.import_module(module), name)


def _reply(request: bytes) -> bytes:
    try:
        module, name, args, kwargs = pickle.loads(request)
        out = ("ok", _resolve(module, name)(*args, **kwargs))
    except BaseException as e:  # everything goes back to the parent, which raises it there
        out = ("err", e)
    try:
        return pickle.dumps(out, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as e:  # an exception or result that does not pickle
        return pickle.dumps(("err", RuntimeError(f"{type(out[1]).__name__}: {out[1]} (unpicklable: {e})")))


def serve(fd_in: int, fd_out: int) -> None:
    # Ctrl-C reaches the whole process group: the parent handles it and ends this child
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with os.fdopen(fd_in, "rb") as fin, os.fdopen(fd_out, "wb") as fout:
        while True:
            request = read_frame(fin)
            if request is None:
                return
            write_frame(fout, _reply(request))


if __name__ == "__main__":
    serve(int(sys.argv[1]), int(sys.argv[2]))
