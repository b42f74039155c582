"""Basic checks of example arrays (numeric, per-example shape), shared by
:mod:`tfprec.inputs` and :mod:`tfprec.packing`."""
from __future__ import annotations

import numpy as np

from tfprec.errors import InvalidDataError


def check_shape(shape, in_shape, what: str) -> None:
    shape = tuple(shape)
    if len(shape) != len(in_shape) or any(
            s is not None and w is not None and s != w for s, w in zip(shape, in_shape)):
        raise InvalidDataError(
            f"{what} has per-example shape {shape}, but the model expects "
            f"{tuple(in_shape)}.")


def check_array(x, in_shape: tuple, what: str) -> np.ndarray:
    if x is None:
        raise InvalidDataError(f"{what} is None; pass a numpy array [N, ...] or a "
                               "tf.data.Dataset of examples.")
    if isinstance(x, (list, tuple)):
        raise InvalidDataError(f"pass {what} as one numpy array [N, ...] or a "
                               "tf.data.Dataset, not a list or tuple.")
    if not hasattr(x, "shape"):
        raise InvalidDataError(f"{what} must be a numpy array [N, ...] or a "
                               f"tf.data.Dataset, got {type(x).__name__}.")
    x = np.asarray(x)
    if x.ndim < 1 or x.dtype.kind not in "fiub":
        raise InvalidDataError(f"{what} must be a numeric array; got dtype "
                               f"{x.dtype} and shape {x.shape}.")
    check_shape(x.shape[1:], in_shape, what)
    return x
