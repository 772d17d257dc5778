"""Reading insightface ONNX files into the IResNet's state dict, without onnxruntime or onnx2torch.

Node names in released insightface files are often numeric, so parameters are matched to IResNet
names by following the graph's data flow instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch

from refface.errors import RefFaceError, short_reason
from refface.models.iresnet import BN_EPS, INPUT_SIZE, STAGE_WIDTHS

_PASS_THROUGH = frozenset({"Identity", "Dropout"})
_SHAPE_ONLY = frozenset({"Shape", "Size"})
_INPUT_ARITHMETIC = frozenset({"Sub", "Add", "Mul", "Div"})
_CONSTANT_SHAPING = frozenset({"Unsqueeze", "Squeeze", "Reshape", "Flatten", "Cast"})


class _OnnxImporter:
    """Maps an insightface/arcface_torch ONNX graph onto IResNet parameter names by following its data flow.

    Supported layouts (tested on graphs from torch's legacy exporter, BN folded and not, opsets 11 and 17, and on
    a synthetic Sub/Mul input normalisation; no released insightface file could be fetched for the tests):

    * every convolution either followed by its BatchNormalization or with that BN folded in (Conv with bias);
      a folded Conv(W, b) becomes our conv weight W plus an identity BN (weight 1, mean 0, var 1 - eps) with bias b;
    * BatchNormalization nodes of any epsilon (folded into our eps-1e-5 running variance);
    * PRelu slopes of shape [C], [C, 1, 1] or [1], stored or reshaped in the graph (Unsqueeze/Reshape/Cast);
    * Identity / Dropout nodes anywhere on the data path, Shape side branches for a dynamic batch;
    * head: BatchNormalization -> Flatten or Reshape -> Gemm (any transB/alpha/beta) or MatMul (+ Add) ->
      optional BatchNormalization (absent when folded into the Gemm);
    * an input normalisation of Sub/Add/Mul/Div by constants before the first Conv (insightface's MXNet
      conversions: (x - 127.5) * 0.0078125 on 0..255 pixels). The graph then expects 0..255 input, so its scale
      is folded into the first convolution for our [-1, 1] input; an offset that does not cancel cannot be folded
      exactly (zero padding) and is refused.

    The downsample shortcut is told apart from the main path by the graph: it is the 1x1 Conv that reads the
    block input and feeds the residual Add, never by node names.
    """

    def __init__(self, source: Path) -> None:
        self.source = source
        try:
            import onnx
            from onnx import helper, numpy_helper
        except ImportError:
            raise RefFaceError(
                f"Reading the ArcFace ONNX file {source} needs the onnx package; run `pip install onnx`."
            ) from None
        self._attribute_value = helper.get_attribute_value
        try:
            model = onnx.load(str(source))
            graph = model.graph
            self.consts: dict[str, np.ndarray] = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
            self.producer: dict[str, Any] = {}
            self.readers: dict[str, list[Any]] = {}
            for node in graph.node:
                if node.op_type == "Constant" and node.attribute:
                    self.consts[node.output[0]] = self._constant_value(node, numpy_helper)
                    continue
                for name in node.output:
                    self.producer[name] = node
                for name in node.input:
                    if name:
                        self.readers.setdefault(name, []).append(node)
            self.inputs = [value for value in graph.input if value.name not in self.consts]
            self.outputs = [value.name for value in graph.output]
        except RefFaceError:
            raise
        except Exception as error:  # protobuf decode errors, bad tensors, missing external data...
            reason = short_reason(error)
            raise RefFaceError(f"The ArcFace ONNX file {source} could not be read ({reason}).") from None
        self.state: dict[str, torch.Tensor] = {}
        self.where = "the stem"  # for error messages: the part of the network being matched
        self.blocks = 0

    @staticmethod
    def _constant_value(node: Any, numpy_helper: Any) -> np.ndarray:
        attribute = node.attribute[0]
        if attribute.name == "value":
            return numpy_helper.to_array(attribute.t)
        if attribute.name in ("value_float", "value_int"):
            return np.array(attribute.f if attribute.name == "value_float" else attribute.i)
        if attribute.name in ("value_floats", "value_ints"):
            return np.array(list(attribute.floats if attribute.name == "value_floats" else attribute.ints))
        return np.array([])

    # ---------------------------------------------------------------- graph helpers
    def fail(self, detail: str) -> NoReturn:
        raise RefFaceError(
            f"The ArcFace ONNX file {self.source} does not match the IResNet layout: in {self.where}, {detail}."
        )

    @staticmethod
    def describe(node: Any) -> str:
        return f"{node.op_type} node '{node.name}'" if node.name else f"{node.op_type} node"

    def canonical(self, tensor: str) -> str:
        """The tensor behind any chain of Identity/Dropout nodes."""
        seen = 0
        while tensor in self.producer and self.producer[tensor].op_type in _PASS_THROUGH and seen < 10_000:
            tensor, seen = self.producer[tensor].input[0], seen + 1
        return tensor

    def users(self, tensor: str) -> list[Any]:
        """Nodes that compute with `tensor`, looking through Identity/Dropout and ignoring Shape side branches."""
        found = []
        for node in self.readers.get(tensor, []):
            if node.op_type in _PASS_THROUGH:
                if node.input[0] == tensor:
                    found.extend(self.users(node.output[0]))
            elif node.op_type not in _SHAPE_ONLY:
                found.append(node)
        return found

    def only_user(self, tensor: str, ops: Sequence[str], what: str) -> Any:
        """The single node reading `tensor`, which must be one of `ops` and read it as its data input."""
        users = self.users(tensor)
        inputs = [self.canonical(name) for name in users[0].input] if len(users) == 1 else []
        # A residual Add may list the shortcut first; every other op takes its data as input 0.
        reads = tensor in inputs if users and users[0].op_type == "Add" else inputs[:1] == [tensor]
        if len(users) != 1 or users[0].op_type not in ops or not reads:
            found = ", ".join(self.describe(node) for node in users) or "nothing"
            self.fail(f"expected {what} ({'/'.join(ops)}) next but found {found}")
        return users[0]

    def attributes(self, node: Any) -> dict[str, Any]:
        values = {}
        for attribute in node.attribute:
            value = self._attribute_value(attribute)
            values[attribute.name] = value.decode() if isinstance(value, bytes) else value
        return values

    def const(self, node: Any, index: int, what: str) -> np.ndarray | None:
        if index >= len(node.input) or not node.input[index]:
            return None
        value = self.folded(self.canonical(node.input[index]))
        if value is None:
            self.fail(f"the {what} of {self.describe(node)} is computed in the graph instead of stored")
        return np.asarray(value, dtype=np.float32)

    def folded(self, name: str, depth: int = 0) -> np.ndarray | None:
        """A stored constant, or one that an unfolded export reshapes or casts on the way (e.g. PReLU slopes)."""
        if name in self.consts:
            return self.consts[name]
        node = self.producer.get(name)
        if node is None or depth > 8 or node.op_type not in _CONSTANT_SHAPING:
            return None
        value = self.folded(self.canonical(node.input[0]), depth + 1)
        if value is None:
            return None
        attributes = self.attributes(node)
        second = self.folded(self.canonical(node.input[1]), depth + 1) if len(node.input) > 1 else None
        if node.op_type in ("Unsqueeze", "Squeeze"):
            axes = attributes.get("axes", None if second is None else [int(axis) for axis in second.reshape(-1)])
            if node.op_type == "Squeeze":
                return np.squeeze(value, axis=None if axes is None else tuple(axes))
            for axis in sorted(axis % (value.ndim + len(axes)) for axis in axes or []):
                value = np.expand_dims(value, axis)
            return value
        if node.op_type == "Reshape":
            if second is None:
                return None
            shape = [value.shape[i] if dim == 0 and i < value.ndim else int(dim) for i, dim in enumerate(second)]
            return value.reshape(shape)
        if node.op_type == "Flatten":
            axis = int(attributes.get("axis", 1)) % max(value.ndim, 1)
            return value.reshape(int(np.prod(value.shape[:axis])), -1)
        return value  # Cast: the values are used as float32 anyway

    def required(self, node: Any, index: int, what: str) -> np.ndarray:
        value = self.const(node, index, what)
        if value is None:
            self.fail(f"{self.describe(node)} has no {what}")
        return value

    def put(self, name: str, value: np.ndarray) -> None:
        self.state[name] = torch.from_numpy(np.array(value, dtype=np.float32, order="C"))  # a writable copy

    # ---------------------------------------------------------------- layers
    def batchnorm(self, node: Any, prefix: str, offset: np.ndarray | None = None) -> str:
        """A BatchNormalization node as our eps-1e-5 BN; `offset` is a bias added just before it."""
        attributes = self.attributes(node)
        if attributes.get("training_mode", 0):
            self.fail(f"{self.describe(node)} is in training mode")
        epsilon = float(attributes.get("epsilon", 1e-5))
        weight, bias, mean, var = (
            self.required(node, index, what) for index, what in enumerate(("scale", "bias", "mean", "variance"), 1)
        )
        if offset is not None:
            mean = mean - offset
        self.put(f"{prefix}.weight", weight)
        self.put(f"{prefix}.bias", bias)
        self.put(f"{prefix}.running_mean", mean)
        self.put(f"{prefix}.running_var", var if epsilon == BN_EPS else var.astype(np.float64) + epsilon - BN_EPS)
        return node.output[0]

    def identity_batchnorm(self, prefix: str, bias: np.ndarray) -> None:
        self.put(f"{prefix}.weight", np.ones_like(bias))
        self.put(f"{prefix}.bias", bias)
        self.put(f"{prefix}.running_mean", np.zeros_like(bias))
        self.put(f"{prefix}.running_var", np.full_like(bias, 1.0 - BN_EPS))

    def conv_node(self, node: Any, kernel: int, strides: Sequence[int], label: str) -> tuple[np.ndarray, int]:
        weight = self.required(node, 1, "weight")
        attributes = self.attributes(node)
        stride = list(attributes.get("strides", [1, 1]))
        padding = kernel // 2
        problems = [
            (weight.ndim != 4 or weight.shape[2:] != (kernel, kernel), f"a {kernel}x{kernel} kernel"),
            (len(stride) != 2 or stride[0] != stride[1] or stride[0] not in strides, f"a stride in {list(strides)}"),
            (list(attributes.get("pads", [0, 0, 0, 0])) != [padding] * 4, f"padding {padding}"),
            (attributes.get("group", 1) != 1, "group 1"),
            (list(attributes.get("dilations", [1, 1])) != [1, 1], "dilation 1"),
            (attributes.get("auto_pad", "NOTSET") not in ("NOTSET", ""), "explicit padding"),
        ]
        for bad, wanted in problems:
            if bad:
                self.fail(f"{self.describe(node)} ({label}) should have {wanted}")
        return weight, stride[0]

    def conv_bn(self, tensor: str, conv: str, bn: str, kernel: int, strides: Sequence[int]) -> tuple[str, int]:
        """Conv reading `tensor`, then its BN or, if folded into the Conv's bias, an identity BN."""
        label = conv.rsplit(".", 1)[-1]
        node = self.only_user(tensor, ("Conv",), label)
        weight, stride = self.conv_node(node, kernel, strides, label)
        bias = self.const(node, 2, "bias")
        self.put(f"{conv}.weight", weight)
        out = node.output[0]
        users = self.users(out)
        if len(users) == 1 and users[0].op_type == "BatchNormalization":
            return self.batchnorm(users[0], bn, bias), stride
        self.identity_batchnorm(bn, np.zeros(weight.shape[0]) if bias is None else bias)
        return self.canonical(out), stride

    def prelu(self, tensor: str, prefix: str, channels: int) -> str:
        node = self.only_user(tensor, ("PRelu",), "a PReLU")
        slope = self.required(node, 1, "slope").reshape(-1)
        if slope.size == 1:
            slope = np.full(channels, slope[0])
        if slope.size != channels:
            self.fail(f"{self.describe(node)} has {slope.size} slopes for {channels} channels")
        self.put(f"{prefix}.weight", slope)
        return self.canonical(node.output[0])

    def input_scale(self, tensor: str) -> tuple[str, np.ndarray | None]:
        """Fold a leading Sub/Add/Mul/Div normalisation (graph expects 0..255) into a per-channel input scale."""
        scale, shift, found = np.ones((1, 3, 1, 1)), np.zeros((1, 3, 1, 1)), False
        while True:
            users = self.users(tensor)
            if len(users) != 1 or users[0].op_type not in _INPUT_ARITHMETIC:
                break
            node = users[0]
            operands = [self.canonical(name) for name in node.input]
            if len(operands) != 2 or operands.count(tensor) != 1:
                break
            index = 1 - operands.index(tensor)
            constant = self.required(node, index, "normalisation constant")
            if constant.size == 1:
                constant = np.full((1, 3, 1, 1), float(constant.reshape(-1)[0]))
            elif constant.size == 3 and constant.shape in ((3, 1, 1), (1, 3, 1, 1)):
                constant = constant.reshape(1, 3, 1, 1)
            else:
                self.fail(f"{self.describe(node)} normalises the input with a constant of shape {list(constant.shape)}")
            if node.op_type == "Add":
                shift = shift + constant
            elif node.op_type == "Sub":
                scale, shift = (scale, shift - constant) if index == 1 else (-scale, constant - shift)
            elif node.op_type == "Mul":
                scale, shift = scale * constant, shift * constant
            elif index == 1:  # Div by a constant
                scale, shift = scale / constant, shift / constant
            else:
                self.fail(f"{self.describe(node)} divides by the input")
            tensor, found = self.canonical(node.output[0]), True
        if not found:
            return tensor, None
        # The graph wants 0..255 pixels u = 127.5 * (x + 1) for our x in [-1, 1]: scale * u + shift = a * x + b.
        a, b = 127.5 * scale, 127.5 * scale + shift
        if np.abs(b).max() > 1e-4 * max(np.abs(a).max(), 1e-12):
            raise RefFaceError(
                f"The ArcFace ONNX file {self.source} normalises its input with an offset that does not map "
                "[-1, 1] images to zero mean, which cannot be folded into the first convolution exactly."
            )
        return tensor, a.reshape(3)

    # ---------------------------------------------------------------- whole network
    def import_weights(self) -> tuple[dict[str, torch.Tensor], tuple[int, ...]]:
        """IResNet state dict and block counts; a malformed graph (say, a node missing inputs) is one sentence."""
        try:
            return self.run()
        except RefFaceError:
            raise
        except Exception as error:
            raise RefFaceError(
                f"The ArcFace ONNX file {self.source} could not be mapped onto an IResNet in {self.where} "
                f"({type(error).__name__}: {short_reason(error)})."
            ) from None

    def run(self) -> tuple[dict[str, torch.Tensor], tuple[int, ...]]:
        if len(self.inputs) != 1:
            self.fail(f"it has {len(self.inputs)} image inputs instead of one")
        value = self.inputs[0]
        dims = [dim.dim_value if dim.HasField("dim_value") else None for dim in value.type.tensor_type.shape.dim]
        fits = len(dims) == 4 and all(
            dims[axis] in (None, want) for axis, want in ((1, 3), (2, INPUT_SIZE), (3, INPUT_SIZE))
        )
        if dims and not fits:
            shown = ["N" if dim is None else dim for dim in dims]
            self.fail(f"its input has shape {shown}, not [N, 3, {INPUT_SIZE}, {INPUT_SIZE}]")
        tensor, scale = self.input_scale(self.canonical(value.name))

        tensor, _ = self.conv_bn(tensor, "conv1", "bn1", 3, (1,))
        if scale is not None:
            self.state["conv1.weight"] *= torch.from_numpy(scale.astype(np.float32)).view(1, 3, 1, 1)
        if self.state["conv1.weight"].shape[1] != 3:
            self.fail(f"the first convolution reads {self.state['conv1.weight'].shape[1]} channels, not 3")
        tensor = self.prelu(tensor, "prelu", STAGE_WIDTHS[0])

        layers: list[int] = []
        for _ in range(len(self.producer) + 1):
            users = self.users(tensor)
            if len(users) == 1 and users[0].op_type == "BatchNormalization":
                break  # the final bn2: no shortcut reads its input
            tensor = self.block(tensor, users, layers)
        if len(layers) != 4:
            self.fail(f"it has {len(layers)} downsampling stages instead of 4")

        self.where = "the head"
        bn2 = self.only_user(tensor, ("BatchNormalization",), "the final bn2")
        tensor = self.canonical(self.batchnorm(bn2, "bn2"))
        flatten = self.only_user(tensor, ("Flatten", "Reshape"), "the flatten before fc")
        if flatten.op_type == "Flatten" and self.attributes(flatten).get("axis", 1) != 1:
            self.fail(f"{self.describe(flatten)} does not flatten from axis 1")
        tensor = self.canonical(flatten.output[0])
        tensor, width = self.fully_connected(tensor)
        users = self.users(tensor)
        if len(users) == 1 and users[0].op_type == "BatchNormalization":
            tensor = self.canonical(self.batchnorm(users[0], "features"))
        else:  # folded into the fc layer
            self.identity_batchnorm("features", np.zeros(width))
        leftover = self.users(tensor)
        if leftover:
            self.fail(f"{self.describe(leftover[0])} follows the embedding layer")
        if tensor not in {self.canonical(name) for name in self.outputs}:
            self.fail("the embedding layer is not the graph output")
        return self.state, tuple(layers)

    def block(self, tensor: str, users: list[Any], layers: list[int]) -> str:
        """One IBasicBlock reading `tensor` (counted into `layers`); returns the residual sum."""
        norms = [node for node in users if node.op_type == "BatchNormalization"]
        if len(norms) != 1:
            found = ", ".join(self.describe(node) for node in users) or "nothing"
            self.fail(f"expected a residual block (BatchNormalization and a shortcut) after it, found {found}")
        # The name depends on whether this block starts a stage, known once its shortcut is found: use a
        # scratch prefix, then rename.
        scratch = "block"
        self.blocks += 1
        self.where = f"residual block {self.blocks}"
        out = self.canonical(self.batchnorm(norms[0], f"{scratch}.bn1"))
        out, _ = self.conv_bn(out, f"{scratch}.conv1", f"{scratch}.bn2", 3, (1,))
        planes = self.state[f"{scratch}.conv1.weight"].shape[0]
        out = self.prelu(out, f"{scratch}.prelu", planes)
        out, stride = self.conv_bn(out, f"{scratch}.conv2", f"{scratch}.bn3", 3, (1, 2))
        add = self.only_user(out, ("Add",), "the residual Add")
        operands = [self.canonical(name) for name in add.input]
        if len(operands) != 2 or out not in operands:
            self.fail(f"{self.describe(add)} is not a two-input residual sum")
        shortcut = operands[1 - operands.index(out)]
        downsample = shortcut != tensor
        allowed = [norms[0], add]
        if downsample:
            allowed.append(self.shortcut(shortcut, tensor, scratch, stride))
            layers.append(1)
        elif not layers:
            self.fail("the first block has no downsampling shortcut")
        else:
            layers[-1] += 1
        others = [node for node in users if not any(node is known for known in allowed)]
        if others:
            self.fail(f"{self.describe(others[0])} also reads the input of a residual block")
        stage, index = len(layers), layers[-1] - 1
        if stage > 4:
            self.fail("it has more than 4 downsampling stages")
        if planes != STAGE_WIDTHS[stage - 1] or stride != (2 if downsample else 1):
            self.fail(
                f"block {index} of stage {stage} has {planes} channels and stride {stride}, expected "
                f"{STAGE_WIDTHS[stage - 1]} and {2 if downsample else 1}"
            )
        for key in [key for key in self.state if key.startswith(f"{scratch}.")]:
            self.state[f"layer{stage}.{index}.{key[len(scratch) + 1 :]}"] = self.state.pop(key)
        return self.canonical(add.output[0])

    def shortcut(self, shortcut: str, tensor: str, scratch: str, stride: int) -> Any:
        """The downsample branch: a 1x1 Conv reading the block input, then its (possibly folded) BN."""
        node = self.producer.get(shortcut)
        bn = None
        if node is not None and node.op_type == "BatchNormalization":
            bn, node = node, self.producer.get(self.canonical(node.input[0]))
        if node is None or node.op_type != "Conv" or self.canonical(node.input[0]) != tensor:
            self.fail("a residual Add adds neither the block input nor a 1x1 Conv of it")
        weight, ds_stride = self.conv_node(node, 1, (1, 2), "downsample")
        if ds_stride != stride:
            self.fail(f"{self.describe(node)} has stride {ds_stride} but its block has stride {stride}")
        offset = self.const(node, 2, "bias")
        self.put(f"{scratch}.downsample.0.weight", weight)
        if bn is not None:
            self.batchnorm(bn, f"{scratch}.downsample.1", offset)
        else:
            self.identity_batchnorm(f"{scratch}.downsample.1", np.zeros(weight.shape[0]) if offset is None else offset)
        return node

    def fully_connected(self, tensor: str) -> tuple[str, int]:
        """fc as Gemm or MatMul (+ Add); returns its output tensor and width."""
        node = self.only_user(tensor, ("Gemm", "MatMul"), "the fc layer")
        weight = self.required(node, 1, "weight")
        if weight.ndim != 2:
            self.fail(f"{self.describe(node)} has a weight of shape {list(weight.shape)}")
        if node.op_type == "Gemm":
            attributes = self.attributes(node)
            if attributes.get("transA", 0):
                self.fail(f"{self.describe(node)} transposes its input")
            if float(attributes.get("alpha", 1.0)) != 1.0:
                weight = weight * float(attributes["alpha"])
            if not attributes.get("transB", 0):
                weight = weight.T
            bias = self.const(node, 2, "bias")
            bias = None if bias is None else bias * float(attributes.get("beta", 1.0))
            out = self.canonical(node.output[0])
        else:
            weight = weight.T
            out, bias = self.canonical(node.output[0]), None
            users = self.users(out)
            if len(users) == 1 and users[0].op_type == "Add":
                operands = [self.canonical(name) for name in users[0].input]
                if len(operands) == 2 and operands.count(out) == 1:
                    bias = self.required(users[0], 1 - operands.index(out), "bias")
                    out = self.canonical(users[0].output[0])
        width = weight.shape[0]
        bias = np.zeros(width) if bias is None else bias.reshape(-1)
        if bias.size == 1:
            bias = np.full(width, bias[0])
        if bias.size != width:
            self.fail(f"{self.describe(node)} has {bias.size} biases for {width} outputs")
        self.put("fc.weight", weight)
        self.put("fc.bias", bias)
        return out, width


def import_onnx_weights(source: Path) -> tuple[dict[str, torch.Tensor], tuple[int, ...]]:
    """The IResNet state dict and block counts held by an insightface/arcface_torch ONNX file."""
    return _OnnxImporter(source).import_weights()
