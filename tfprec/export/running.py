"""Running exported ``.tflite`` classifiers: logits with the LiteRT
interpreter (:func:`tflite_predict`) and decision agreement between two
classifiers (:func:`agreement`), for either export backend."""
from __future__ import annotations

import os

import numpy as np

from tfprec._tf import keras
from tfprec.errors import ExportError
from tfprec.export.checks import interpreter
from tfprec.export.formats import RESOLVER_OF, ExportInvalidDataError, as_export_errors
from tfprec.inputs import as_inputs, choice, positive_int

__all__ = ["tflite_predict", "agreement"]


# --------------------------------------------------------------------------
# Running exported models
# --------------------------------------------------------------------------
def tflite_predict(path, x, batch_size: int = 256, resolver: str = "auto") -> np.ndarray:
    """Logits of a ``.tflite`` classifier on inputs ``x`` ([N, ...] float, or
    integers for a model whose input is plain integers: uint8 images, ids).

    Runs in batches of ``batch_size`` examples (a positive int; the input is
    resized once; the last batch is zero-padded).  ``resolver``: 'auto'
    (XNNPACK, the interpreter's default), 'ref' (LiteRT reference kernels)
    or 'builtin'.  No examples give an empty array.

    Raises:
      ExportError: ``path`` is not a str / PathLike, not a file, or not a
        TFLite model the interpreter loads, or the model does not have one
        float or plain-integer input (message names the path); ``batch_size``
        or ``resolver`` is bad, or ``x`` is None, non-numeric, non-finite,
        outside an integer input's range or does not match
        the model's input shape (checked against the interpreter's input
        details before anything runs; these are also InvalidDataErrors and
        name the argument, the expected and the given shape).
    """
    with as_export_errors():
        bs = positive_int("batch_size", batch_size)
        resolver = choice("resolver", resolver, tuple(RESOLVER_OF.values()))
    if path is None or not isinstance(path, (str, os.PathLike)):
        raise ExportError(f"path must be a .tflite file name, got {path!r}")
    path = os.fspath(path)
    if not os.path.isfile(path):
        what = "is a directory" if os.path.isdir(path) else "does not exist"
        raise ExportError(f"cannot load TFLite model path={path!r}: it {what}")
    try:
        it = interpreter(path=path, resolver=resolver)
    except (ValueError, RuntimeError) as e:
        raise ExportError(f"cannot load TFLite model {path!r}: {e}") from e
    ins = it.get_input_details()
    if len(ins) != 1 or len(it.get_output_details()) != 1:
        raise ExportError(f"TFLite model {path!r} has {len(ins)} inputs and "
                          f"{len(it.get_output_details())} outputs; tflite_predict "
                          "runs one-input, one-output classifiers")
    inp = ins[0]
    in_dtype = np.dtype(inp["dtype"])
    scale = (inp.get("quantization") or (0.0, 0))[0]
    if in_dtype.kind != "f" and (in_dtype.kind not in "iu" or scale):
        raise ExportError(f"TFLite model {path!r} takes quantized {in_dtype} inputs; "
                          "tflite_predict feeds the model's own inputs: float, or "
                          "plain integers (uint8 images, token ids), as export_tflite "
                          "writes them")
    sig = inp["shape_signature"] if len(inp["shape_signature"]) else inp["shape"]
    if len(sig) < 1:
        raise ExportError(f"TFLite model {path!r} has a scalar input; "
                          "tflite_predict needs a batch axis")
    shape = tuple(None if d < 0 else int(d) for d in sig[1:])
    with as_export_errors():
        x = as_inputs(x, shape, what="x", dtype=in_dtype, allow_empty=True)
    n = x.shape[0]
    if n == 0:
        return np.zeros((0,), np.float64)
    bs = min(bs, n)
    it.resize_tensor_input(inp["index"], [bs, *x.shape[1:]])
    it.allocate_tensors()
    out_idx = it.get_output_details()[0]["index"]
    outs = []
    for s in range(0, n, bs):
        xb = x[s:s + bs]
        m = xb.shape[0]
        if m < bs:
            xb = np.concatenate([xb, np.zeros((bs - m, *x.shape[1:]), in_dtype)])
        it.set_tensor(inp["index"], xb)
        it.invoke()
        outs.append(np.array(it.get_tensor(out_idx)[:m], np.float64))
    return np.concatenate(outs)


def _logits_of(a, x, what: str):
    """Decisions [N] of ``a``: logits / decisions, a tf_keras model or a
    .tflite path (the last two run on ``x``)."""
    if isinstance(a, keras.Model):
        if x is None:
            raise ExportInvalidDataError(f"agreement: {what} is a model; pass the "
                                         "inputs x to run it")
        if getattr(a, "inputs", None):           # any built tf_keras model,
            with as_export_errors():             # fake-quant ones included
                xs = as_inputs(x, tuple(a.inputs[0].shape[1:]), what="x",
                               dtype=np.dtype(a.inputs[0].dtype.name))
        else:
            xs = np.asarray(x, np.float32)
        out = np.asarray(a.predict(xs, verbose=0), np.float64)
    elif isinstance(a, (str, os.PathLike)):
        if x is None:
            raise ExportInvalidDataError(f"agreement: {what} is a .tflite file "
                                         f"({os.fspath(a)!r}); pass the inputs x "
                                         "to run it")
        out = tflite_predict(a, x)
    else:
        out = np.asarray(a) if hasattr(a, "shape") or isinstance(a, (list, tuple)) \
            else None
        if out is None or out.dtype.kind not in "fiu" or out.ndim not in (1, 2):
            raise ExportInvalidDataError(
                f"agreement: {what} must be logits [N, M], decisions [N], a "
                f"tf_keras model or a .tflite path, got {type(a).__name__}"
                + (f" of dtype {out.dtype} and shape {out.shape}" if out is not None
                   else ""))
    return out if out.ndim == 1 else np.argmax(out, axis=-1)


def agreement(model_or_logits_a, logits_b, x=None) -> float:
    """Fraction of examples on which two classifiers take the same decision
    (a probability; NaN for no examples).

    Each argument is logits ``[N, M]`` (or decisions ``[N]``), a tf_keras
    model, or a path to a ``.tflite`` file; models and files are run on
    ``x``.  A final softmax does not change the argmax, so a Keras model's
    probabilities compare directly with TFLite logits.

    Raises:
      ExportError: also an InvalidDataError for an argument that is none of
        these, a model or file without ``x``, bad ``x``, or different
        numbers of examples (the message names the argument); also an
        UnsupportedModelError for a model tfprec cannot read.
    """
    da = _logits_of(model_or_logits_a, x, "model_or_logits_a")
    db = _logits_of(logits_b, x, "logits_b")
    if da.shape != db.shape:
        raise ExportInvalidDataError(
            f"agreement: model_or_logits_a gives {da.shape[0]} decisions but "
            f"logits_b gives {db.shape[0]}")
    if da.size == 0:
        return float("nan")
    return float(np.mean(da == db))
