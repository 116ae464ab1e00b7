"""`--latency-cmd 'ssh board ./bench {model}'`: time candidates on a device that cannot run Python.

The command is run through the shell once per candidate with `{model}` replaced by the path of a
temporary ONNX file; it must print the latency on stdout as `latency_ms: 3.21` (or `latency_us:`,
`latency_s:`), or a bare number of milliseconds on its last line. Results feed the same latency
table and cache as ONNX Runtime measurements.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import tempfile

import onnx

from onnxprune.errors import OnnxPruneError
from onnxprune.profiling.timing import parse_latency_output


def measure_with_command(cmd: str, model: onnx.ModelProto, timeout_s: float = 600.0) -> float:
    if "{model}" not in cmd:
        raise OnnxPruneError("--latency-cmd must contain {model} where the candidate file path goes")
    fd, path = tempfile.mkstemp(suffix=".onnx", prefix="onnxprune_candidate_")
    os.close(fd)
    try:
        onnx.save_model(model, path)
        full = cmd.replace("{model}", shlex.quote(path))
        try:
            r = subprocess.run(full, shell=True, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise OnnxPruneError(f"--latency-cmd timed out after {timeout_s:.0f}s") from None
        if r.returncode != 0:
            tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or [""]
            raise OnnxPruneError(f"--latency-cmd exited {r.returncode}: {tail[0][:200]}")
        return parse_latency_output(r.stdout)
    finally:
        os.unlink(path)
