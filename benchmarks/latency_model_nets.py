"""Full-size benchmark networks built with onnx.helper (random weights), for when torch is not there
to export models/arch/*. Same shapes as the arch files' full configs: ResNet-50, MobileNetV2,
ConvNeXt-T (224x224), DeiT-Tiny (ViT, 224, patch 16) and BERT-mini (seq 128). BatchNorm is
folded into conv biases, as the TorchScript exporter writes it in eval mode."""
from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class Net:
    """A tiny graph builder: every call adds nodes and returns the output tensor name."""

    def __init__(self, seed: int = 0):
        self.nodes, self.inits, self.n = [], [], 0
        self.rng = np.random.default_rng(seed)

    def name(self, p: str) -> str:
        self.n += 1
        return f"{p}_{self.n}"

    def const(self, arr, p="w") -> str:
        n = self.name(p)
        self.inits.append(numpy_helper.from_array(np.asarray(arr), n))
        return n

    def weight(self, *shape, fan_in=None) -> str:
        fan_in = fan_in or int(np.prod(shape[1:])) or 1
        return self.const((self.rng.standard_normal(shape) / math.sqrt(fan_in)).astype(np.float32))

    def op(self, op, inputs, **attrs) -> str:
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=f"/{out}", **attrs))
        return out

    def conv(self, x, cin, cout, k, s=1, group=1, act="Relu") -> str:
        w = self.weight(cout, cin // group, k, k)
        b = self.const(np.zeros(cout, np.float32))
        y = self.op("Conv", [x, w, b], kernel_shape=[k, k], strides=[s, s], pads=[k // 2] * 4, group=group)
        if act == "Relu6":
            return self.op("Clip", [y, self.const(np.float32(0)), self.const(np.float32(6))])
        return self.op(act, [y]) if act else y

    def linear(self, x, cin, cout) -> str:
        return self.op("Add", [self.op("MatMul", [x, self.weight(cin, cout, fan_in=cin)]),
                               self.const(np.zeros(cout, np.float32))])

    def layernorm(self, x, d) -> str:
        scale, bias = self.const(np.ones(d, np.float32)), self.const(np.zeros(d, np.float32))
        return self.op("LayerNormalization", [x, scale, bias], axis=-1, epsilon=1e-6)

    def gelu(self, x) -> str:
        e = self.op("Erf", [self.op("Div", [x, self.const(np.float32(math.sqrt(2)))])])
        return self.op("Mul", [self.op("Mul", [x, self.op("Add", [e, self.const(np.float32(1))])]),
                               self.const(np.float32(0.5))])

    def reshape(self, x, shape) -> str:
        return self.op("Reshape", [x, self.const(np.array(shape, np.int64), "shape")])

    def model(self, inputs, out, out_shape) -> onnx.ModelProto:
        g = helper.make_graph(self.nodes, "net", inputs,
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, out_shape)], self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 8
        return m


def image_input():
    return [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 224, 224])]


def head(net: Net, x, c) -> str:
    x = net.op("Flatten", [net.op("GlobalAveragePool", [x])])
    return net.op("Gemm", [x, net.weight(1000, c), net.const(np.zeros(1000, np.float32))], transB=1)


def resnet50() -> onnx.ModelProto:
    net = Net()
    x = net.op("MaxPool", [net.conv("input", 3, 64, 7, 2)], kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4)
    cin = 64
    for mid, n, s in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for i in range(n):
            stride = s if i == 0 else 1
            y = net.conv(net.conv(net.conv(x, cin, mid, 1), mid, mid, 3, stride), mid, 4 * mid, 1, act=None)
            sc = net.conv(x, cin, 4 * mid, 1, stride, act=None) if i == 0 else x
            x, cin = net.op("Relu", [net.op("Add", [y, sc])]), 4 * mid
    return net.model(image_input(), head(net, x, 2048), [1, 1000])


def mobilenetv2() -> onnx.ModelProto:
    net = Net()
    x, cin = net.conv("input", 3, 32, 3, 2, act="Relu6"), 32
    for t, c, n, s in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                       (6, 320, 1, 1)):
        for i in range(n):
            stride, hid = (s if i == 0 else 1), cin * t
            y = net.conv(x, cin, hid, 1, act="Relu6") if t != 1 else x
            y = net.conv(net.conv(y, hid, hid, 3, stride, group=hid, act="Relu6"), hid, c, 1, act=None)
            x, cin = (net.op("Add", [x, y]) if stride == 1 and cin == c else y), c
    return net.model(image_input(), head(net, net.conv(x, cin, 1280, 1, act="Relu6"), 1280), [1, 1000])


def convnext_block(net: Net, x, d) -> str:
    y = net.conv(x, d, d, 7, 1, group=d, act=None)
    y = net.layernorm(net.op("Transpose", [y], perm=[0, 2, 3, 1]), d)
    y = net.linear(net.gelu(net.linear(y, d, 4 * d)), 4 * d, d)
    y = net.op("Mul", [y, net.const(np.full(d, 1e-6, np.float32))])
    return net.op("Add", [x, net.op("Transpose", [y], perm=[0, 3, 1, 2])])


def channel_ln(net: Net, x, d) -> str:
    y = net.layernorm(net.op("Transpose", [x], perm=[0, 2, 3, 1]), d)
    return net.op("Transpose", [y], perm=[0, 3, 1, 2])


def convnext_tiny() -> onnx.ModelProto:
    net = Net()
    dims = (96, 192, 384, 768)
    w = net.weight(96, 3, 4, 4)
    x = channel_ln(net, net.op("Conv", ["input", w, net.const(np.zeros(96, np.float32))], kernel_shape=[4, 4],
                                strides=[4, 4]), 96)
    for k, (d, depth) in enumerate(zip(dims, (3, 3, 9, 3))):
        if k:
            y = channel_ln(net, x, dims[k - 1])
            x = net.op("Conv", [y, net.weight(d, dims[k - 1], 2, 2), net.const(np.zeros(d, np.float32))],
                       kernel_shape=[2, 2], strides=[2, 2])
        for _ in range(depth):
            x = convnext_block(net, x, d)
    x = net.layernorm(net.op("Flatten", [net.op("GlobalAveragePool", [x])]), 768)
    out = net.op("Gemm", [x, net.weight(1000, 768), net.const(np.zeros(1000, np.float32))], transB=1)
    return net.model(image_input(), out, [1, 1000])


def attention(net: Net, x, n, d, heads, mask=None) -> str:
    hd = d // heads
    qkv = net.reshape(net.linear(x, d, 3 * d), [1, n, 3, heads, hd])
    qkv = net.op("Transpose", [qkv], perm=[2, 0, 3, 1, 4])
    q, k, v = (net.op("Squeeze", [net.op("Gather", [qkv, net.const(np.array([i], np.int64), "idx")], axis=0),
                                  net.const(np.array([0], np.int64), "ax")]) for i in range(3))
    s = net.op("Mul", [net.op("MatMul", [q, net.op("Transpose", [k], perm=[0, 1, 3, 2])]),
                       net.const(np.float32(hd ** -0.5))])
    if mask is not None:
        s = net.op("Add", [s, mask])
    y = net.op("MatMul", [net.op("Softmax", [s], axis=-1), v])
    y = net.reshape(net.op("Transpose", [y], perm=[0, 2, 1, 3]), [1, n, d])
    return net.linear(y, d, d)


def encoder_block(net: Net, x, n, d, heads, mlp, mask=None, pre_ln=True) -> str:
    if pre_ln:
        x = net.op("Add", [x, attention(net, net.layernorm(x, d), n, d, heads, mask)])
        return net.op("Add", [x, net.linear(net.gelu(net.linear(net.layernorm(x, d), d, mlp)), mlp, d)])
    x = net.layernorm(net.op("Add", [x, attention(net, x, n, d, heads, mask)]), d)
    return net.layernorm(net.op("Add", [x, net.linear(net.gelu(net.linear(x, d, mlp)), mlp, d)]), d)


def deit_tiny() -> onnx.ModelProto:
    net = Net()
    d, n = 192, 197
    x = net.op("Conv", ["input", net.weight(d, 3, 16, 16), net.const(np.zeros(d, np.float32))],
               kernel_shape=[16, 16], strides=[16, 16])
    x = net.op("Transpose", [net.reshape(x, [1, d, 196])], perm=[0, 2, 1])
    x = net.op("Concat", [net.weight(1, 1, d, fan_in=1), x], axis=1)
    x = net.op("Add", [x, net.weight(1, n, d, fan_in=50)])
    for _ in range(12):
        x = encoder_block(net, x, n, d, 3, 768)
    cls = net.op("Gather", [net.layernorm(x, d), net.const(np.array(0, np.int64), "idx")], axis=1)
    out = net.op("Gemm", [cls, net.weight(1000, d), net.const(np.zeros(1000, np.float32))], transB=1)
    return net.model(image_input(), out, [1, 1000])


def bert_mini(seq: int = 128) -> onnx.ModelProto:
    net = Net()
    d = 256
    emb = net.op("Gather", [net.weight(30522, d, fan_in=1), "input_ids"], axis=0)
    x = net.layernorm(net.op("Add", [emb, net.weight(1, seq, d, fan_in=1)]), d)
    m = net.op("Cast", ["attention_mask"], to=TensorProto.FLOAT)
    m = net.op("Mul", [net.op("Sub", [net.const(np.float32(1)), m]), net.const(np.float32(-10000))])
    mask = net.reshape(m, [1, 1, 1, seq])
    for _ in range(4):
        x = encoder_block(net, x, seq, d, 4, 1024, mask, pre_ln=False)
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, seq]),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [1, seq])]
    return net.model(inputs, x, [1, seq, d])


NETS = {"resnet50": resnet50, "mobilenetv2": mobilenetv2, "convnext": convnext_tiny, "vit": deit_tiny,
        "bert": bert_mini}
