"""The one place where tfprec checks the data and scalar arguments it is given.

Every public function that takes examples (``noise_gains``, ``validate``,
``sweep``, ``calibrate``, the peers, ``export_tflite``) goes through these
functions, so all of them accept the same inputs and reject bad ones in the
same words:

* inputs ``x``: a numeric numpy array ``[N, *input_shape]`` or a
  ``tf.data.Dataset`` of inputs, batched or not, whose elements may be
  ``(x, y)`` pairs (the labels are then taken from it where labels are
  needed); lists and tuples of arrays are refused, as are datasets of
  dicts and infinite datasets without ``max_examples``, except for a model
  with several inputs, whose data come as a list / tuple / dict of arrays or
  a dataset of them (:mod:`tfprec.packing`; the shape passed is then a
  :class:`tfprec.packing.PackedShape`);
* labels ``y``: ``N`` integer class ids, ``[N, 1]`` columns of them, or
  ``N`` one-hot rows of width M; integral floats are accepted;
* scalars: positive / non-negative ints (never bools), probabilities,
  positive numbers, real bools, choices, bit-widths and lists of them,
  JSON-serializable metadata.

Errors name the argument in the words of the command line's flag checks
("target must be a probability in (0, 1], got 1.5"); they are
:class:`tfprec.errors.InvalidDataError`, or the class a caller passes as
``error`` (:class:`tfprec.errors.PlanError` for plan arguments); bit-widths
are always PlanError (:func:`tfprec.fixedpoint.check_bits`).
"""
from __future__ import annotations

import math
from typing import Iterator, Optional, Sequence, Union

import numpy as np

from tfprec import packing
from tfprec.arrays import check_array as _check_array, check_shape as _check_shape
from tfprec._tf import tf
from tfprec.errors import InvalidDataError

DataLike = Union[np.ndarray, "tf.data.Dataset"]


# ================================================================ scalars
# Every check takes the argument's ``name`` (as the caller spells it: an
# argument "max_bits", a flag "--max_bits", a JSON key "layer 'fc1': dot_length")
# and raises ``error`` (InvalidDataError unless the caller's family of errors
# is another, e.g. PlanError for plan arguments) in the same words as the
# command line: "<name> must be <what>, got <value!r>".
def _is_int(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, np.integer))


def _is_real(value) -> bool:
    return (not isinstance(value, bool)
            and isinstance(value, (int, float, np.integer, np.floating)))


def positive_int(name: str, value, *, error=InvalidDataError) -> int:
    """``value`` as an int >= 1 (bools and non-integers refused)."""
    if not _is_int(value) or value < 1:
        raise error(f"{name} must be a positive int, got {value!r}")
    return int(value)


def nonnegative_int(name: str, value, *, error=InvalidDataError) -> int:
    """``value`` as an int >= 0 (bools and non-integers refused)."""
    if not _is_int(value) or value < 0:
        raise error(f"{name} must be a non-negative int, got {value!r}")
    return int(value)


def optional_positive_int(name: str, value, *, error=InvalidDataError) -> Optional[int]:
    """None, or ``value`` as an int >= 1."""
    return None if value is None else positive_int(name, value, error=error)


def probability(name: str, value, *, allow_zero: bool = False,
                error=InvalidDataError) -> float:
    """``value`` as a float probability in (0, 1] ([0, 1] with allow_zero).

    Bools, strings, None, NaN and infinities are refused."""
    ok = (_is_real(value) and math.isfinite(float(value))
          and (0.0 <= float(value) if allow_zero else 0.0 < float(value))
          and float(value) <= 1.0)
    if not ok:
        rng = "[0, 1]" if allow_zero else "(0, 1]"
        raise error(f"{name} must be a probability in {rng}, got {value!r}")
    return float(value)


def positive_number(name: str, value, *, unit: str = "", error=InvalidDataError) -> float:
    """``value`` as a finite float > 0 (``unit`` names its unit in the message)."""
    if not _is_real(value) or not (math.isfinite(float(value)) and value > 0):
        raise error(f"{name} must be a positive finite number"
                    f"{' of ' + unit if unit else ''}, got {value!r}")
    return float(value)


def finite_number(name: str, value, *, error=InvalidDataError) -> float:
    """``value`` as a finite float (bools, strings, NaN, infinities refused)."""
    if not _is_real(value) or not math.isfinite(float(value)):
        raise error(f"{name} must be a finite number, got {value!r}")
    return float(value)


def nonnegative_number(name: str, value, *, unit: str = "",
                       error=InvalidDataError) -> float:
    """``value`` as a finite float >= 0 (``unit`` names its unit in the message)."""
    if not _is_real(value) or not (math.isfinite(float(value)) and value >= 0):
        raise error(f"{name} must be a non-negative finite number"
                    f"{' of ' + unit if unit else ''}, got {value!r}")
    return float(value)


def flag(name: str, value, *, error=InvalidDataError) -> bool:
    """``value`` if it is a real bool (or numpy bool); "no", 0 and None refused."""
    if not isinstance(value, (bool, np.bool_)):
        raise error(f"{name} must be true or false (a bool), got {value!r}")
    return bool(value)


def text(name: str, value, *, allow_empty: bool = True, error=InvalidDataError) -> str:
    """``value`` if it is a str (non-empty unless ``allow_empty``)."""
    if not isinstance(value, str) or (not allow_empty and not value):
        raise error(f"{name} must be a{'' if allow_empty else ' non-empty'} "
                    f"string, got {value!r}")
    return value


def choice(name: str, value, choices: Sequence[str], *, error=InvalidDataError) -> str:
    """``value`` if it is one of ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise error(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def choices(name: str, values, allowed: Sequence[str], *, allow_empty: bool = False,
            error=InvalidDataError) -> tuple:
    """``values`` (a list or tuple of names from ``allowed``, no repeats) as a
    tuple.  A bare string is refused: ``"paper"`` would read as its letters."""
    if isinstance(values, str) or not isinstance(values, (list, tuple)):
        raise error(f"{name} must be a list or tuple of names from "
                    f"{tuple(allowed)}, got {values!r}"
                    + (f"; pass ({values!r},)" if isinstance(values, str) else ""))
    values = tuple(values)
    if not values and not allow_empty:
        raise error(f"{name} is empty; choose from {tuple(allowed)}")
    for v in values:
        choice(name, v, allowed, error=error)
    if len(set(values)) != len(values):
        raise error(f"{name} lists a name twice: {values}")
    return values


def bits(name: str, value, lo: Optional[int] = None, hi: Optional[int] = None) -> int:
    """``value`` as an int bit-width in lo..hi (default 2..16 bits); PlanError
    otherwise (:func:`tfprec.fixedpoint.check_bits`, the check the
    ``--max_bits`` flag uses)."""
    from tfprec.fixedpoint import MAX_BITS, MIN_BITS, check_bits
    return check_bits(name, value, MIN_BITS if lo is None else lo,
                      MAX_BITS if hi is None else hi)


def bit_levels(name: str, values, lo: Optional[int] = None,
               hi: Optional[int] = None) -> list:
    """``values`` (an iterable of int bit-widths, e.g. sweep levels or B_min
    values) as a list of ints in lo..hi bits (default 2..16), each checked by
    :func:`bits`: 0, 40 or 3.5 raise PlanError naming ``name[i]``.  A string
    is refused (the command line's "2-12" form is parsed by the CLI)."""
    from tfprec.errors import PlanError
    if isinstance(values, (str, bytes)) or values is None or not hasattr(values, "__iter__"):
        raise PlanError(f"{name} must be a list or range of bit-widths (ints in "
                        f"2..16), got {values!r}")
    return [bits(f"{name}[{i}]", v, lo, hi) for i, v in enumerate(values)]


def json_compatible(name: str, value, *, default=None, error=InvalidDataError):
    """``value`` if ``json.dumps(value, default=default)`` can write it (dicts,
    lists, str, numbers, bools, None); else ``error`` naming ``name`` and the
    offending type."""
    import json
    try:
        json.dumps(value, default=default)
    except (TypeError, ValueError) as e:
        raise error(f"{name} must be JSON-serializable (dicts, lists, str, "
                    f"numbers, bools, None): {e}") from None
    return value


# ================================================================ datasets
def _is_dataset(x) -> bool:
    return isinstance(x, tf.data.Dataset)


def _dataset_parts(ds, what: str):
    """(inputs dataset, labels dataset or None, element spec of the inputs)."""
    spec = ds.element_spec
    if isinstance(spec, dict):
        raise InvalidDataError(f"{what}: dict-valued datasets are not supported; "
                               "map the dataset to (input, label) or to the input.")
    if isinstance(spec, (tuple, list)):
        if len(spec) == 0 or isinstance(spec[0], (tuple, list, dict)):
            raise InvalidDataError(f"{what}: dataset elements must be an input "
                                   "tensor or an (input, label) pair.")
        xs = ds.map(lambda *e: e[0])
        ys = ds.map(lambda *e: e[1]) if len(spec) > 1 else None
        return xs, ys, spec[0]
    return ds, None, spec


def _check_finite_cardinality(ds, what: str, max_examples: Optional[int]) -> None:
    if max_examples is None and ds.cardinality() == tf.data.INFINITE_CARDINALITY:
        raise InvalidDataError(
            f"{what} is an infinite dataset (repeat() without a count); pass "
            "max_examples, or take() a finite number of elements.")


def _batched_dataset(ds, in_shape: tuple, batch_size: int, what: str):
    """ds batched along a leading axis, checking the per-example shape."""
    shape = tuple(ds.element_spec.shape)
    if len(shape) == len(in_shape):
        _check_shape(shape, in_shape, f"{what} (dataset element)")
        return ds.batch(batch_size)
    _check_shape(shape[1:], in_shape, f"{what} (dataset batch)")
    return ds


def raw_dtype(x) -> Optional[np.dtype]:
    """numpy dtype of the inputs as given (before any cast): of the array,
    or of a dataset's input elements; None when it cannot be told."""
    try:
        if _is_dataset(x):
            spec = x.element_spec
            if isinstance(spec, (tuple, list)):
                spec = spec[0]
            return np.dtype(spec.dtype.as_numpy_dtype)
        return np.dtype(x.dtype) if hasattr(x, "dtype") else None
    except (TypeError, AttributeError):
        return None


def check_inputs_spec(x: DataLike, in_shape: tuple, *, what: str = "x",
                      max_examples: Optional[int] = None) -> None:
    """Checks ``x`` without reading its values: an array's type, dtype,
    per-example shape and length, or a dataset's element spec (shape,
    dtype) and cardinality.  For checks before a long run (the callback's
    ``on_train_begin``); the full checks happen when the data are read."""
    if isinstance(in_shape, packing.PackedShape):     # a several-input model
        return packing.check_inputs_spec(x, in_shape, what=what,
                                         max_examples=max_examples,
                                         single=check_inputs_spec)
    if _is_dataset(x):
        _check_finite_cardinality(x, what, max_examples)
        xs, _, spec = _dataset_parts(x, what)
        if not spec.dtype.is_floating and not spec.dtype.is_integer \
                and spec.dtype != tf.bool:
            raise InvalidDataError(f"{what}: dataset elements have dtype "
                                   f"{spec.dtype.name}; they must be numbers.")
        if x.cardinality() == 0:
            raise InvalidDataError(f"{what} is an empty dataset: at least one "
                                   "example is needed.")
        _batched_dataset(xs, in_shape, 1, what)
        return
    arr = _check_array(x, in_shape, what)
    if len(arr) == 0:
        raise InvalidDataError(f"{what} is empty: at least one example is needed.")


# ================================================================ inputs
def _check_finite(x: np.ndarray, what: str, offset: int = 0) -> None:
    finite = np.isfinite(x.reshape(len(x), -1)).all(axis=1) if x.dtype.kind == "f" \
        else np.ones(len(x), bool)
    if not finite.all():
        raise InvalidDataError(
            f"{what}: example {offset + int(np.argmin(finite))} contains NaN or Inf.")


def iter_batches(x: DataLike, in_shape: tuple, batch_size: int, *,
                 max_examples: Optional[int] = None, dtype="float32",
                 what: str = "x") -> Iterator[np.ndarray]:
    """Yields finite input batches of ``x`` (numpy or tf.data) as ``dtype``.

    Streams: a dataset is never held in memory whole.  Raises
    InvalidDataError for mis-shaped, non-numeric or non-finite data, and
    for an infinite dataset without ``max_examples``.  A dataset of unknown
    cardinality (e.g. after ``filter()``) is read until it ends; bound it with
    ``max_examples`` or ``take(n)`` if it may not end.
    """
    if isinstance(in_shape, packing.PackedShape):     # a several-input model
        yield from packing.iter_batches(x, in_shape, batch_size, dtype=dtype,
                                        max_examples=max_examples, what=what,
                                        single=iter_batches)
        return
    batch_size = positive_int("batch_size", batch_size)
    max_examples = optional_positive_int("max_examples", max_examples)
    seen = 0
    if _is_dataset(x):
        _check_finite_cardinality(x, what, max_examples)
        xs, _, _ = _dataset_parts(x, what)
        for b in _batched_dataset(xs, in_shape, batch_size, what):
            b = np.asarray(b)
            if max_examples is not None:
                b = b[: max_examples - seen]
            if len(b) == 0:
                break
            if b.dtype.kind not in "fiub":
                raise InvalidDataError(f"{what}: dataset elements have dtype "
                                       f"{b.dtype}; they must be numbers.")
            b = _cast(b, dtype, what, seen)
            _check_finite(b, what, seen)
            seen += len(b)
            yield b
        return
    arr = _check_array(x, in_shape, what)
    n = len(arr) if max_examples is None else min(len(arr), max_examples)
    for s in range(0, n, batch_size):
        b = _cast(arr[s: min(s + batch_size, n)], dtype, what, s)
        _check_finite(b, what, s)
        yield b


def _cast(b: np.ndarray, dtype, what: str, offset: int) -> np.ndarray:
    """``b`` as ``dtype``; data cast to an integer dtype (a model whose input
    is integer token ids or uint8 images) must be finite, integral and within
    the dtype's range, else InvalidDataError naming the first bad example (no
    silent truncation or wrap-around)."""
    if np.dtype(dtype).kind in "iu" and b.dtype.kind == "f" and len(b):
        _check_finite(b, what, offset)
        ok = (b == np.round(b)).reshape(len(b), -1).all(axis=1)
        if not ok.all():
            raise InvalidDataError(
                f"{what}: example {offset + int(np.argmin(ok))} holds non-integral "
                f"values, but the model's input has integer dtype "
                f"{np.dtype(dtype).name} (token ids, or images it rescales itself).")
    if np.dtype(dtype).kind in "iu" and b.dtype.kind in "fiu" and len(b):
        info = np.iinfo(dtype)
        lo, hi = b.reshape(len(b), -1).min(axis=1), b.reshape(len(b), -1).max(axis=1)
        bad = (lo < info.min) | (hi > info.max)
        if bad.any():
            i = int(np.argmax(bad))
            raise InvalidDataError(
                f"{what}: example {offset + i} holds values in [{lo[i]:g}, {hi[i]:g}], "
                f"outside the range of the model's integer input dtype "
                f"{np.dtype(dtype).name} [{info.min}, {info.max}].")
    return b.astype(dtype, copy=False)


def as_inputs(x: DataLike, in_shape: tuple, *, dtype="float32", what: str = "x",
              max_examples: Optional[int] = None, allow_empty: bool = False,
              allow_single: bool = False) -> np.ndarray:
    """``x`` (numpy or tf.data) as one finite ``dtype`` array [N, *in_shape].

    ``allow_single`` accepts one example without its batch axis.
    """
    if isinstance(in_shape, packing.PackedShape):     # a several-input model
        return packing.as_inputs(x, in_shape, dtype=dtype, what=what,
                                 max_examples=max_examples, allow_empty=allow_empty,
                                 allow_single=allow_single, single=as_inputs)
    if allow_single and not _is_dataset(x) and hasattr(x, "shape") \
            and tuple(np.shape(x)) == tuple(in_shape):
        x = np.asarray(x)[None]
    parts = list(iter_batches(x, in_shape, 4096, max_examples=max_examples,
                              dtype=dtype, what=what))
    if not parts:
        if allow_empty:
            return np.zeros((0, *in_shape), dtype)
        raise InvalidDataError(f"{what} is empty: at least one example is needed.")
    return np.concatenate(parts) if len(parts) > 1 else parts[0]


def model_num_classes(model) -> int:
    """M, the number of classes of ``model``: its output width, or 2 for a
    one-unit (binary sigmoid or logit) output."""
    m = int(model.outputs[0].shape[-1])
    return 2 if m == 1 else m


def as_labels(y, n: int, num_classes: int, *, what: str = "y") -> np.ndarray:
    """``y`` as ``n`` int64 class ids in 0..num_classes-1.

    Accepts ids, an [n, 1] column of ids, integral floats, and one-hot rows of
    width num_classes (each row exactly one 1).
    """
    if y is None:
        raise InvalidDataError(f"{what} is None; pass {n} integer class ids.")
    if isinstance(y, (list, tuple)):
        y = np.asarray(y)
    if not hasattr(y, "shape"):
        raise InvalidDataError(f"{what} must be a numpy array of class ids, got "
                               f"{type(y).__name__}.")
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[0] == 1 and y.shape[1] == n and n > 1 \
            and n != num_classes:
        raise InvalidDataError(
            f"{what} has shape {tuple(y.shape)}: one row of {n} labels; pass the "
            f"{n} class ids as a 1-D array or an [{n}, 1] column.")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]                      # a column of ids: one id per row
    elif y.ndim == 2 and y.shape[1] > 1:
        if y.shape[1] != num_classes:
            raise InvalidDataError(
                f"{what} has one-hot rows of width {y.shape[1]}, but the model has "
                f"{num_classes} classes.")
        if y.dtype.kind not in "fiub" or not np.all((y == 0) | (y == 1)) \
                or not np.all(y.sum(axis=1) == 1):
            raise InvalidDataError(f"{what}: 2-D labels must be one-hot rows (one 1 "
                                   "per row, zeros elsewhere).")
        y = y.argmax(axis=1)
    if y.ndim != 1 or len(y) != n:
        raise InvalidDataError(
            f"{what} has shape {tuple(y.shape)}, but there are {n} examples; pass "
            f"{n} integer class ids (or {n} one-hot rows of width {num_classes}).")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise InvalidDataError(f"{what} must hold integer class ids; got "
                                   "non-integral floats.")
    elif y.dtype.kind not in "iu":
        raise InvalidDataError(f"{what} has dtype {y.dtype}; labels must be "
                               "integer class ids.")
    y = y.astype(np.int64)
    if n and (y.min() < 0 or y.max() >= num_classes):
        raise InvalidDataError(
            f"{what} has labels in {int(y.min())}..{int(y.max())}; the model has "
            f"{num_classes} classes (0..{num_classes - 1}).")
    return y


def as_examples(x: DataLike, y, in_shape: tuple, num_classes: int, *,
                dtype="float32", what: str = "x", label_what: str = "y",
                max_examples: Optional[int] = None, need_labels: bool = False):
    """(inputs [N, ...], labels [N] int64 or None) from numpy or tf.data.

    Labels come from ``y`` or, when ``y`` is None and ``x`` is a dataset of
    (input, label) pairs, from the dataset.  ``need_labels`` makes missing
    labels an error.

    A dataset is read once and materialized, up to ``max_examples`` examples
    (all of it when None).  An infinite dataset (``repeat()``) without
    ``max_examples`` is refused (InvalidDataError naming ``what``); one of
    unknown cardinality (e.g. after ``filter()``) is read until it ends, so
    an unknown-but-infinite one (``repeat().filter(...)``) never returns:
    bound it with ``max_examples`` or ``take(n)``.
    """
    if isinstance(in_shape, packing.PackedShape):     # a several-input model
        return packing.as_examples(x, y, in_shape, num_classes, dtype=dtype, what=what,
                                   label_what=label_what, max_examples=max_examples,
                                   need_labels=need_labels, single=as_examples)
    if _is_dataset(x) and y is None:
        _check_finite_cardinality(x, what, max_examples)
        xs, ys, _ = _dataset_parts(x, what)
        if ys is not None:
            if max_examples is not None:
                x = x.take(max_examples)
            pairs = list(x.as_numpy_iterator())
            if not pairs:
                raise InvalidDataError(f"{what} is empty: at least one example is needed.")
            elem_rank = len(tuple(xs.element_spec.shape))
            batched = elem_rank != len(in_shape)
            xa = [p[0] for p in pairs]
            ya = [np.asarray(p[1]) for p in pairs]
            xa = np.concatenate(xa) if batched else np.stack(xa)
            ya = np.concatenate(ya) if batched else np.stack(ya)
            if max_examples is not None:    # take() counted batches
                xa, ya = xa[:max_examples], ya[:max_examples]
            x_arr = as_inputs(xa, in_shape, dtype=dtype, what=what)
            return x_arr, as_labels(ya, len(x_arr), num_classes, what=label_what)
    x_arr = as_inputs(x, in_shape, dtype=dtype, what=what, max_examples=max_examples)
    if y is None:
        if need_labels:
            raise InvalidDataError(
                f"{label_what} is None; this measurement needs labels: pass "
                f"{len(x_arr)} integer class ids, or a dataset of (input, label) pairs.")
        return x_arr, None
    if max_examples is not None and hasattr(y, "__len__") and len(y) > len(x_arr):
        y = np.asarray(y)[:len(x_arr)]
    return x_arr, as_labels(y, len(x_arr), num_classes, what=label_what)


def model_input_shape(model) -> tuple:
    """Per-example input shape of a one-input tf_keras model; for a model with
    several inputs the packed shape (S,) (:class:`tfprec.packing.PackedShape`,
    which makes the functions above pack the data)."""
    if packing.is_multi_input(model):
        return packing.packed_shape(model)
    return tuple(model.inputs[0].shape[1:])


def model_dtype(model) -> str:
    """numpy dtype name of the model's input (several inputs: of the packed
    vector, :func:`tfprec.packing.pack_dtype`)."""
    if packing.is_multi_input(model):
        return packing.pack_dtype(packing.input_specs(model))
    return model.inputs[0].dtype.name
