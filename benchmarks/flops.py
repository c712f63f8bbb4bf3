"""Floating-point operations of a traced TF function, counted by the TF profiler.

``function_flops(fn, input_signature)`` traces ``fn`` at a fully static input signature
(batch 1, one image size), freezes its variables into constants and asks
``tf.compat.v1.profiler`` for the total of the ops that register a FLOP count: Conv2D and
its transposes, MatMul / BatchMatMul, and the element-wise and reduction ops. A multiply-add
counts as two FLOPs. What is not counted: ops inside a ``tf.while_loop`` or ``tf.map_fn``
body (the per-image resize of the serving functions, a small share) and ops whose shape is
only known at run time (after non-max suppression, say); both models' networks run outside
such loops at static shapes, so the count is the network plus the static part of the
post-processing.
"""

from __future__ import annotations

import tensorflow as tf
from tensorflow.python.framework import convert_to_constants


def function_flops(fn, input_signature) -> int:
    """FLOPs of one call of ``fn`` (a Python function or ``tf.function``) at ``input_signature``."""
    return function_flops_by_type(fn, input_signature)[0]


def function_flops_by_type(fn, input_signature) -> tuple[int, dict[str, int]]:
    """(total FLOPs, FLOPs per op type, e.g. ``{"Conv2D": ...}``) of one call of ``fn``."""
    if not isinstance(fn, tf.types.experimental.PolymorphicFunction):
        fn = tf.function(fn)
    return concrete_flops_by_type(fn.get_concrete_function(*input_signature))


def concrete_flops(concrete) -> int:
    """FLOPs of a concrete function's graph, its variables frozen into constants."""
    return concrete_flops_by_type(concrete)[0]


def concrete_flops_by_type(concrete) -> tuple[int, dict[str, int]]:
    """(total, per op type) FLOPs of a concrete function's graph, variables frozen."""
    frozen = convert_to_constants.convert_variables_to_constants_v2(
        concrete, lower_control_flow=False
    )
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    profile = tf.compat.v1.profiler.profile(graph=frozen.graph, cmd="op", options=options)
    # The "op" view nests each op type under the previous one; ``float_ops`` is a node's own.
    by_type, nodes = {}, list(profile.children)
    while nodes:
        node = nodes.pop()
        if node.float_ops:
            by_type[node.name] = by_type.get(node.name, 0) + int(node.float_ops)
        nodes.extend(node.children)
    return int(profile.total_float_ops), by_type


def conv_flops(height: int, width: int, kernel: int, cin: int, cout: int, stride: int = 1) -> int:
    """FLOPs of a 'same' convolution: 2 * k^2 * Cin * Cout per output pixel (for checks)."""
    out_h, out_w = -(-height // stride), -(-width // stride)
    return 2 * kernel * kernel * cin * cout * out_h * out_w
