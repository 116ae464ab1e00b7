"""Graphsurgeon nodes seen as NodeProtos, so the attribute and input readers of ``base`` work on them
while rules rewrite."""
from __future__ import annotations

import onnx


def node_proto(gs_node, with_inputs: bool = False) -> onnx.NodeProto:
    """A NodeProto with the attributes of ``gs_node`` (those ONNX can encode) and, with
    ``with_inputs``, its input names."""
    n = onnx.helper.make_node(gs_node.op, [], [], name=gs_node.name)
    for k, v in gs_node.attrs.items():
        try:
            n.attribute.append(onnx.helper.make_attribute(k, v))
        except Exception:  # graphsurgeon keeps attributes ONNX cannot encode (e.g. None): readers skip them
            pass
    if with_inputs:
        n.input.extend([t.name for t in gs_node.inputs])
    return n
