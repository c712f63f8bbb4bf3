"""Copies a PyTorch state dict into Keras variables, by an explicit name map.

Layouts: a conv weight [out, in, kh, kw] becomes a Keras kernel [kh, kw, in, out]; vectors
(biases, BatchNorm and GroupNorm gamma/beta, running mean/variance) copy as they are.
Every tensor of the state dict must be mapped, every variable must be filled and every
shape must match: anything else is an error that names the tensor. BatchNorm's
``num_batches_tracked`` counters (no Keras counterpart, unused in inference) are the only
tensors left out, and they are left out by name.
"""

from __future__ import annotations

import numpy as np

IGNORED_SUFFIXES = (".num_batches_tracked",)


def to_keras_layout(array: np.ndarray) -> np.ndarray:
    """torch layout -> Keras layout (conv weights transposed, others unchanged)."""
    if array.ndim == 4:  # [out, in, kh, kw] -> [kh, kw, in, out]
        return np.transpose(array, (2, 3, 1, 0))
    return array


def assign_torch_weights(variables: dict, state: dict, source: str, strip_prefix: str = ""):
    """Assigns ``state[name]`` to ``variables[name]`` for every name.

    Args:
      variables: {torch parameter name: keras.Variable}.
      state: {torch parameter name: np.ndarray} (``solo_tf.torch_checkpoint``).
      source: the checkpoint's name, for the errors.
      strip_prefix: removed from the state's names first (say "module." of DataParallel).

    Raises ValueError naming the tensors missing from ``state``, the ones left over (the
    model has no place for them) and any of the wrong shape; nothing is assigned then.
    """
    if strip_prefix:
        state = {
            k[len(strip_prefix) :] if k.startswith(strip_prefix) else k: v for k, v in state.items()
        }
    state = {k: v for k, v in state.items() if not k.endswith(IGNORED_SUFFIXES)}
    missing = sorted(set(variables) - set(state))
    extra = sorted(set(state) - set(variables))
    problems = []
    if missing:
        problems.append(f"{len(missing)} tensors missing from the checkpoint: {_few(missing)}")
    if extra:
        problems.append(f"{len(extra)} tensors the model has no place for: {_few(extra)}")
    values = {}
    for name in sorted(set(variables) & set(state)):
        value = to_keras_layout(np.asarray(state[name]))
        expected = tuple(variables[name].shape)
        if value.shape != expected:
            problems.append(
                f"tensor {name!r} has shape {tuple(state[name].shape)} (Keras layout "
                f"{value.shape}), the model expects {expected}"
            )
        values[name] = value
    if problems:
        raise ValueError(f"{source}: " + "; ".join(problems))
    for name, value in values.items():
        variables[name].assign(value.astype(variables[name].dtype))


def _few(names: list, limit: int = 8) -> str:
    return ", ".join(repr(n) for n in names[:limit]) + (" ..." if len(names) > limit else "")
