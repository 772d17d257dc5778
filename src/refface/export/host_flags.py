"""Two boolean inputs that face-swap hosts bind on a ReF-LDM U-Net and that change nothing.

The hosts that run ReF-LDM as a denoiser bind `is_ref_flag_input` and
`use_reference_exclusive_path_globally_input` (bool [1]) on every U-Net call, through IOBinding, which refuses
a name the graph does not use and cannot bind an input that has a default (an initializer). refface's
`unet.onnx` therefore takes both as plain inputs (any value) and adds `0 * (a + b)` to its output: exactly
nothing, but a use of each input.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HOST_FLAGS = ("is_ref_flag_input", "use_reference_exclusive_path_globally_input")


def accept_host_flags(model: onnx.ModelProto, output: str) -> onnx.ModelProto:
    """`model` with the two flag inputs, each used in a no-op on the graph output `output`."""
    graph = model.graph
    raw = f"{output}_before_flags"
    for node in graph.node:
        node.output[:] = [raw if name == output else name for name in node.output]
    casts = []
    for flag in HOST_FLAGS:
        graph.input.append(helper.make_tensor_value_info(flag, TensorProto.BOOL, [1]))
        casts.append(f"{flag}_as_float")
        graph.node.append(helper.make_node("Cast", [flag], [casts[-1]], to=TensorProto.FLOAT))
    graph.initializer.append(numpy_helper.from_array(np.zeros(1, dtype=np.float32), "host_flags_zero"))
    graph.node.append(helper.make_node("Add", casts, ["host_flags_sum"]))
    graph.node.append(helper.make_node("Mul", ["host_flags_sum", "host_flags_zero"], ["host_flags_nothing"]))
    graph.node.append(helper.make_node("Add", [raw, "host_flags_nothing"], [output]))
    return model
