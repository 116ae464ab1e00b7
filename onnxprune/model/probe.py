"""The first run of a user's model happens in a child process (model/runtime.py run_isolated): a
native crash of ONNX Runtime on it (a kernel dividing by zero, a segfault) becomes a one-line error
instead of the silent death of the tool, before any stage runs the model in this process."""
from __future__ import annotations

from contextlib import nullcontext

import onnx

from onnxprune.model.external import has_external, on_disk
from onnxprune.model.feeds import random_inputs
from onnxprune.model.isolated_child import probe_run
from onnxprune.model.load import custom_ops
from onnxprune.model.runtime import NativeCrash, run_isolated
from onnxprune.model.shapes import graph_input_shapes, with_batch


def check_runs_natively(model: onnx.ModelProto, input_shapes: dict[str, list[int]] | None = None,
                        what: str = "the model", batch: int | None = None) -> None:
    """Raise NativeCrash (an OnnxPruneError) if ONNX Runtime crashes loading or running `model`
    once on random inputs. Any other failure is left to the stages that run the model: they word
    their own errors (bad input shapes, a model ORT refuses), so this check changes none of them."""
    if custom_ops(model):
        return  # no ORT kernel: nothing runs it, and --no-verify / --latency-cmd are the user's way
    try:
        shapes = graph_input_shapes(model, with_batch(model, input_shapes, batch))
        feeds = random_inputs(model, shapes, seed=0)
        external = has_external(model)
        blob = None if external else model.SerializeToString()
    except Exception:  # noqa: BLE001 -- shapes the later stages reject, or a model over 2 GB
        return
    try:
        with on_disk(model) if external else nullcontext() as path:  # the child maps the same files
            run_isolated(probe_run, str(path) if external else blob, feeds)
    except NativeCrash as e:
        dims = ", ".join(f"{k}={'x'.join(map(str, v))}" for k, v in shapes.items())
        raise e.within(f"ONNX Runtime crashed running {what} (inputs {dims})") from None
    except Exception:  # noqa: BLE001 -- ORT's own errors: reported by the stage that meets them
        return
