"""Models with several inputs, seen by tfprec as one-input models (packing).

tfprec analyses a functional classifier with several inputs (an image branch
and a tabular branch, two towers, ...) through one *packed* input: each
example's inputs, every one flattened, are concatenated in ``model.inputs``
order into one float vector of length S = the sum of the inputs' sizes
(:func:`pack`).  The parsed graph (:func:`tfprec.statistics.graph.parse_model`)
starts with one weightless op per input that slices its part back out of the
packed vector and reshapes it (:class:`SliceCall`); the rest of the graph is
the user's model itself, which is never rebuilt or modified for this.  An
integer input (token ids) is cast back to its integer dtype; ids are exact
because float32 holds every integer of magnitude up to 2^24 and float64 up to
2^53 (larger ones, and non-integral values for an integer input, are refused
with :class:`~tfprec.errors.InvalidDataError`).

Data for a several-input model is given the usual Keras ways, and every
public function that takes examples accepts them (:mod:`tfprec.inputs` hands
them here):

* a list or tuple of arrays ``[N, *shape_k]``, in ``model.inputs`` order;
* a dict of such arrays keyed by input name (``model.input_names``);
* a ``tf.data.Dataset`` whose elements are such a tuple or dict, or an
  ``(inputs, labels)`` pair of them (batched or not);
* the packed matrix ``[N, S]`` itself (from :func:`pack`).

Several *outputs* stay unsupported.
"""
from __future__ import annotations

import contextlib
import dataclasses

import numpy as np

from tfprec._tf import tf
from tfprec.arrays import check_array, check_shape
from tfprec.errors import InvalidDataError, UnsupportedModelError

#: Tensor id of the packed input in a parsed graph of a several-input model.
PACKED_ID = "tfprec/packed_inputs"


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """One input of a several-input model: its name (``model.input_names``),
    per-example shape (no batch axis), numpy dtype name, and its slice
    ``start:start + size`` of the packed vector (sizes in elements)."""

    name: str
    shape: tuple
    dtype: str
    start: int
    size: int

    @property
    def integral(self) -> bool:
        return np.dtype(self.dtype).kind in "iub"


class PackedShape(tuple):
    """The per-example shape ``(S,)`` of the packed input, carrying the
    inputs' :class:`InputSpec` (``specs``) and the model's name.  Passed
    where tfprec expects an input shape; :mod:`tfprec.inputs` packs the data
    when it sees one."""

    def __new__(cls, specs, model_name: str = "model"):
        self = super().__new__(cls, (int(sum(s.size for s in specs)),))
        self.specs = tuple(specs)
        self.model_name = model_name
        return self

    def __getnewargs__(self):
        return (self.specs, self.model_name)

    @property
    def names(self) -> list:
        return [s.name for s in self.specs]


def is_multi_input(model) -> bool:
    """Whether ``model`` (a tf_keras graph model) has several inputs."""
    return len(getattr(model, "inputs", None) or ()) > 1


def input_specs(model) -> tuple:
    """The :class:`InputSpec` of every input of ``model``, in order.

    Raises:
      UnsupportedModelError: an input has an unknown per-example dimension
        or a non-numeric dtype (the message names the input).
    """
    names = list(getattr(model, "input_names", None) or
                 [t.name.split(":")[0] for t in model.inputs])
    specs, start = [], 0
    for name, t in zip(names, model.inputs):
        shape = tuple(t.shape[1:])
        if any(d is None for d in shape):
            raise UnsupportedModelError(
                f"input '{name}' of model '{model.name}' has per-example shape "
                f"{shape} with an unknown dimension; tfprec packs the inputs of a "
                "model with several inputs into one vector and needs their sizes: "
                "give every input a fixed shape.")
        dt = tf.as_dtype(t.dtype)
        if not (dt.is_floating or dt.is_integer or dt == tf.bool):
            raise UnsupportedModelError(
                f"input '{name}' of model '{model.name}' has dtype {dt.name}; "
                "tfprec needs numeric inputs.")
        size = int(np.prod(shape)) if shape else 1
        specs.append(InputSpec(name, shape, dt.name, start, size))
        start += size
    return tuple(specs)


def packed_shape(model) -> PackedShape:
    """The packed per-example shape (S,) of several-input ``model``."""
    return PackedShape(input_specs(model), model.name)


def pack_dtype(specs) -> str:
    """numpy dtype name of the packed vector: float64 if an input is float64
    (a float64 model), else float32."""
    return "float64" if any(s.dtype == "float64" for s in specs) else "float32"


# ================================================================ in TF
def unpack_one(t, spec: InputSpec, float_dtype=None):
    """Input ``spec``'s part of packed batch ``t`` [B, S]: [B, *shape], in its
    integer dtype (an integer input) or ``float_dtype`` (default: its own)."""
    part = tf.reshape(t[:, spec.start: spec.start + spec.size], [-1, *spec.shape])
    dt = tf.as_dtype(spec.dtype)
    return tf.cast(part, dt if (not dt.is_floating or float_dtype is None)
                   else tf.as_dtype(float_dtype))


def unpack_tensors(t, specs, float_dtype=None) -> list:
    """The inputs of packed batch ``t`` [B, S] as a list of tensors in
    ``model.inputs`` order (see :func:`unpack_one`)."""
    return [unpack_one(t, s, float_dtype) for s in specs]


class SliceCall:
    """Callable ``(values, dtype) -> output`` of a parsed graph's op that takes
    one input's part out of the packed input (float inputs come out in the
    pass ``dtype``, integer ones in their own dtype)."""

    def __init__(self, spec: InputSpec):
        self.spec = spec

    def __call__(self, values, dtype):
        return unpack_one(values[0], self.spec, dtype)


def call_model(model, t, **kwargs):
    """``model(t)`` for a packed batch ``t`` [B, S] of a several-input model
    (the inputs in their own dtypes), else ``model(t)``.  Calling a model on
    values adds no node to it."""
    if not is_multi_input(model):
        return model(t, **kwargs)
    return model(unpack_tensors(t, input_specs(model)), **kwargs)


# ================================================================ numpy
def _parts(x, pshape: PackedShape, what: str) -> list:
    """The per-input members of ``x`` (a list / tuple in input order or a
    dict keyed by input name) in input order."""
    names = pshape.names
    n = len(names)
    model = f"model '{pshape.model_name}' has {n} inputs {names}"
    if isinstance(x, dict):
        missing = [k for k in names if k not in x]
        if missing:
            raise InvalidDataError(f"{what} is a dict without the key(s) {missing}: "
                                   f"{model}.")
        extra = [k for k in x if k not in names]
        if extra:
            raise InvalidDataError(f"{what} has key(s) {extra} that name no input: "
                                   f"{model}.")
        return [x[k] for k in names]
    if isinstance(x, (list, tuple)):
        if len(x) != n:
            raise InvalidDataError(f"{what} holds {len(x)} arrays, but {model}; "
                                   f"pass {n} arrays in that order, or a dict keyed "
                                   "by input name.")
        return list(x)
    raise InvalidDataError(
        f"{what}: {model}; pass a list or tuple of {n} arrays [N, ...] in that "
        "order, a dict keyed by input name, or a tf.data.Dataset of such "
        f"elements; got {type(x).__name__}"
        + (f" of shape {tuple(np.shape(x))}" if hasattr(x, "shape") else "") + ".")


def pack_arrays(x, pshape: PackedShape, what: str = "x",
                allow_single: bool = False) -> np.ndarray:
    """``x`` (list / tuple / dict of arrays) as the packed float64 matrix
    [N, S].  Each array is checked (numeric, per-example shape) with its
    input named; the arrays must hold the same number N of examples.
    ``allow_single`` accepts one example without its batch axis."""
    arrays = _parts(x, pshape, what)
    if allow_single and all(hasattr(a, "shape") and tuple(np.shape(a)) == s.shape
                            for a, s in zip(arrays, pshape.specs)):
        arrays = [np.asarray(a)[None] for a in arrays]
    arrays = [check_array(a, s.shape, f"{what}['{s.name}']")
              for a, s in zip(arrays, pshape.specs)]
    counts = {s.name: len(a) for a, s in zip(arrays, pshape.specs)}
    if len(set(counts.values())) > 1:
        raise InvalidDataError(f"{what}: the inputs hold different numbers of "
                               f"examples: {counts}; each needs one row per example.")
    n = len(arrays[0])
    return np.concatenate([np.asarray(a, np.float64).reshape(n, -1) for a in arrays],
                          axis=1)


def pack(model, x, dtype: str = "float32") -> np.ndarray:
    """The packed matrix [N, S] of several-input ``model``'s inputs ``x`` (a
    list / tuple in ``model.inputs`` order or a dict keyed by input name), in
    ``dtype``; what tfprec analyses.  Integer inputs are checked to be exact
    in ``dtype``."""
    pshape = packed_shape(model)
    b = pack_arrays(x, pshape, "x")
    check_integers(b, pshape, dtype, "x")
    return b.astype(dtype)


def unpack(model, packed) -> list:
    """The inverse of :func:`pack`: a list of arrays [N, *shape_k] in
    ``model.inputs`` order, each in its input's dtype."""
    specs = input_specs(model)
    p = np.asarray(packed)
    return [p[:, s.start: s.start + s.size].reshape(len(p), *s.shape).astype(s.dtype)
            for s in specs]


def check_integers(b: np.ndarray, pshape: PackedShape, dtype, what: str) -> None:
    """InvalidDataError naming the input unless every integer input's part of
    packed batch ``b`` holds integers that ``dtype`` represents exactly
    (magnitude <= 2^24 in float32, 2^53 in float64)."""
    limit = 2 ** (53 if np.dtype(dtype).itemsize >= 8 else 24)
    for s in pshape.specs:
        if not s.integral or len(b) == 0:
            continue
        part = np.asarray(b[:, s.start: s.start + s.size], np.float64)
        if not np.all(part == np.round(part)):
            raise InvalidDataError(f"{what}['{s.name}'] must hold integers (the "
                                   f"input has dtype {s.dtype}); got non-integral values.")
        big = float(np.max(np.abs(part))) if part.size else 0.0
        if big > limit:
            raise InvalidDataError(
                f"{what}['{s.name}'] holds integers up to {big:.0f} in magnitude; "
                f"tfprec carries them in {np.dtype(dtype).name}, exact only up to "
                f"{limit}.")


# ================================================================ datasets
def _packed_dataset(ds, pshape: PackedShape, what: str):
    """``ds`` with the inputs of each element packed into one float64 vector
    ([S], or [B, S] for a batched dataset); labels (and any further members
    of an ``(inputs, labels)`` element) pass through unchanged."""
    spec = ds.element_spec
    seq = isinstance(spec, (tuple, list))
    labelled = seq and len(spec) >= 1 and isinstance(spec[0], (tuple, list, dict))
    in_spec = spec[0] if labelled else spec
    parts = _parts(in_spec, pshape, f"{what} (dataset element)")
    batched = []
    for p, s in zip(parts, pshape.specs):
        w = f"{what}['{s.name}'] (dataset element)"
        if not isinstance(p, tf.TensorSpec):
            raise InvalidDataError(f"{w} is not a tensor ({type(p).__name__}).")
        if not (p.dtype.is_floating or p.dtype.is_integer or p.dtype == tf.bool):
            raise InvalidDataError(f"{w} has dtype {p.dtype.name}; it must be numbers.")
        shape = tuple(p.shape)
        is_batched = len(shape) == len(s.shape) + 1
        check_shape(shape[1:] if is_batched else shape, s.shape, w)
        batched.append(is_batched)
    if len(set(batched)) > 1:
        raise InvalidDataError(f"{what}: some inputs of the dataset elements are "
                               "batched and others are not.")
    sizes = {s.name: p.shape[0] for p, s in zip(parts, pshape.specs)
             if batched[0] and p.shape[0] is not None}
    if len(set(sizes.values())) > 1:
        raise InvalidDataError(f"{what}: the inputs of the dataset elements hold "
                               f"different batch sizes: {sizes}.")
    rows = [-1] if batched[0] else []

    def pack_element(elem):
        ins = _parts(elem[0] if labelled else elem, pshape, what)
        flat = [tf.reshape(tf.cast(v, tf.float64), [*rows, s.size])
                for v, s in zip(ins, pshape.specs)]
        packed = tf.concat(flat, axis=-1)
        return (packed, *elem[1:]) if labelled else packed

    def fn(*e):
        return pack_element(tuple(e) if seq else e[0])
    return ds.map(fn)


def packed_data(x, pshape: PackedShape, what: str = "x", allow_single: bool = False):
    """``x`` as packed data: a float64 matrix [N, S], or a dataset of packed
    elements (labels kept).  A numpy array [N, S] is taken as already packed."""
    if x is None:
        raise InvalidDataError(f"{what} is None; pass a list of arrays, a dict "
                               "keyed by input name, or a tf.data.Dataset.")
    if isinstance(x, tf.data.Dataset):
        return _packed_dataset(x, pshape, what)
    if isinstance(x, (list, tuple, dict)):
        return pack_arrays(x, pshape, what, allow_single=allow_single)
    if hasattr(x, "shape") and np.ndim(x) == 2 and tuple(np.shape(x)[1:]) == tuple(pshape):
        return x                    # already packed (tfprec's own arrays)
    return _parts(x, pshape, what)  # raises, naming the inputs


@contextlib.contextmanager
def _reading(what: str):
    """A TF error while packing a dataset element (inputs of one element
    with different batch sizes) becomes InvalidDataError naming ``what``."""
    try:
        yield
    except tf.errors.InvalidArgumentError as e:
        raise InvalidDataError(
            f"{what}: the inputs of a dataset element could not be packed "
            f"(different batch sizes?): {e.message}") from None


# ======================================= tfprec.inputs for several inputs
def iter_batches(x, pshape: PackedShape, batch_size: int, *, max_examples=None,
                 dtype="float32", what: str = "x", single):
    """:func:`tfprec.inputs.iter_batches` (``single``, the one-input
    version) for a several-input model: packed batches [b, S] in ``dtype``."""
    xp = packed_data(x, pshape, what)
    it = single(xp, tuple(pshape), batch_size, max_examples=max_examples,
                             dtype="float64", what=what)
    while True:
        with _reading(what):
            b = next(it, None)
        if b is None:
            return
        check_integers(b, pshape, dtype, what)
        yield b.astype(dtype, copy=False)


def as_inputs(x, pshape: PackedShape, *, dtype="float32", what: str = "x",
              max_examples=None, allow_empty: bool = False,
              allow_single: bool = False, single) -> np.ndarray:
    """:func:`tfprec.inputs.as_inputs` (``single``) for a several-input
    model: [N, S]."""
    xp = packed_data(x, pshape, what, allow_single=allow_single)
    with _reading(what):
        b = single(xp, tuple(pshape), dtype="float64", what=what,
                             max_examples=max_examples, allow_empty=allow_empty)
    check_integers(b, pshape, dtype, what)
    return b.astype(dtype, copy=False)


def as_examples(x, y, pshape: PackedShape, num_classes: int, *, dtype="float32",
                what: str = "x", single, **kwargs):
    """:func:`tfprec.inputs.as_examples` (``single``) for a several-input
    model."""
    xp = packed_data(x, pshape, what)
    with _reading(what):
        xa, ya = single(xp, y, tuple(pshape), num_classes,
                                    dtype="float64", what=what, **kwargs)
    check_integers(xa, pshape, dtype, what)
    return xa.astype(dtype, copy=False), ya


def check_inputs_spec(x, pshape: PackedShape, *, what: str = "x",
                      max_examples=None, single) -> None:
    """:func:`tfprec.inputs.check_inputs_spec` (``single``) for a
    several-input model."""
    xp = packed_data(x, pshape, what)
    single(xp, tuple(pshape), what=what, max_examples=max_examples)


def check_fixed_sizes(model) -> None:
    """UnsupportedModelError naming the first input of ``model`` with a size
    other than the batch's left open (None, e.g. ``keras.Input((None, None,
    3))``): tfprec counts each layer's operations and analyses one network,
    so every size must be known."""
    for name, t in zip(model.input_names, model.inputs):
        if any(d is None for d in t.shape[1:]):
            raise UnsupportedModelError(
                f"input '{name}' of model '{model.name}' has "
                f"shape {tuple(t.shape)}: sizes other than the batch's are unknown "
                "(None), and tfprec needs them to count each layer's operations and to "
                "analyse one network.  Fix them to your data's, e.g. fixed = "
                "keras.models.clone_model(model, input_tensors=keras.Input((224, 224, "
                "3))); fixed.set_weights(model.get_weights()), or build the model "
                "with input_shape=(...).")
