"""Running TFLite files under each LiteRT kernel family, latency, per-op
dtype tables, and the TensorFlow reference files (float, int8 PTQ) that
:mod:`tfprec.export.aeq` reports next to its own file.
"""
from __future__ import annotations

import re
import time
from typing import Optional

import numpy as np

from tfprec.export.aeq_recipe import RESOLVER, WEIGHT_OPS, read_graph
from tfprec.export.checks import interpreter


def _parts(x) -> list:
    """``x`` as a list of arrays, one per model input (an array: one input;
    a list or tuple: several inputs, in ``model.inputs`` order)."""
    return [np.asarray(a) for a in x] if isinstance(x, (list, tuple)) else [np.asarray(x)]


def input_details(it, names=None) -> list:
    """The interpreter's input details in the order of ``names`` (the
    Keras model's input names; a converted tf_keras model's signature input
    ``serving_default_<name>:0``), or as listed when ``names`` is None or
    does not match."""
    det = it.get_input_details()
    if not names or len(names) != len(det):
        return det
    by = {}
    for d in det:
        n = d["name"].split(":")[0]
        n = n[len("serving_default_"):] if n.startswith("serving_default_") else n
        by[n] = d
    return [by[n] for n in names] if set(by) == set(names) else det


_MISSING_OP = re.compile(r"Didn't find op for builtin opcode '([A-Za-z0-9_]+)'"
                         r"|unresolved custom op: ([A-Za-z0-9_]+)")


def missing_op(error: BaseException) -> Optional[str]:
    """The operator an interpreter failed to resolve (LiteRT's "Didn't
    find op for builtin opcode 'ELU' ...", "Encountered unresolved custom op:
    Foo"), or None for any other error."""
    m = _MISSING_OP.search(str(error))
    return (m.group(1) or m.group(2)) if m else None


def run_family(content: bytes, x, family: str, batch_size: int = 256,
               names=None) -> np.ndarray:
    """Outputs (float64 [N, ...]) of a TFLite model on ``x`` (an array, or
    for a several-input model a list of arrays in the order of ``names``,
    the Keras model's input names) under kernel family ``family``
    ('xnnpack', 'optimized', 'reference').  Inputs of an integer model are
    quantized with its input scale / zero point and outputs dequantized."""
    parts = _parts(x)
    it = interpreter(content, RESOLVER[family])
    det = input_details(it, names)
    n = int(parts[0].shape[0])
    bs = max(1, min(batch_size, n))
    for d, a in zip(det, parts):
        it.resize_tensor_input(d["index"], [bs, *a.shape[1:]])
    it.allocate_tensors()
    out = it.get_output_details()[0]
    outs = []
    for s in range(0, n, bs):
        m = min(bs, n - s)
        for d, a in zip(det, parts):
            xb = a[s:s + bs]
            if m < bs:
                xb = np.concatenate([xb, np.zeros((bs - m, *a.shape[1:]), xb.dtype)])
            it.set_tensor(d["index"], _to_input(xb, d))
        it.invoke()
        outs.append(_from_output(it.get_tensor(out["index"])[:m], out))
    return np.concatenate(outs) if outs else np.zeros((0,))


def _to_input(x, detail):
    dt = np.dtype(detail["dtype"])
    scale, zp = detail["quantization"]
    if dt.kind == "f" or not scale:          # float, or plain integer ids
        return x.astype(dt)
    info = np.iinfo(dt)
    return np.clip(np.round(x / scale) + zp, info.min, info.max).astype(dt)


def _from_output(y, detail):
    dt = np.dtype(detail["dtype"])
    if dt.kind == "f":
        return np.asarray(y, np.float64)
    scale, zp = detail["quantization"]
    return (np.asarray(y, np.float64) - zp) * scale


def median_latency(content: bytes, x, family: str = "xnnpack",
                   repeats: int = 200, warmup: int = 10, names=None) -> float:
    """Median wall time (seconds) of one single-example invoke (batch 1,
    one thread), over ``repeats`` runs cycling through ``x`` (an array, or a
    list of arrays for a several-input model, see :func:`run_family`)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    kinds = {"xnnpack": OpResolverType.AUTO,
             "optimized": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
             "reference": OpResolverType.BUILTIN_REF}
    parts = _parts(x)
    it = Interpreter(model_content=content, num_threads=1,
                     experimental_op_resolver_type=kinds[family])
    det = input_details(it, names)
    for d, a in zip(det, parts):
        it.resize_tensor_input(d["index"], [1, *a.shape[1:]])
    it.allocate_tensors()
    n = len(parts[0])
    feeds = [[_to_input(a[i % n][None], d) for d, a in zip(det, parts)]
             for i in range(min(n, 64))]
    times = []
    for r in range(warmup + repeats):
        for d, v in zip(det, feeds[r % len(feeds)]):
            it.set_tensor(d["index"], v)
        t = time.perf_counter()
        it.invoke()
        if r >= warmup:
            times.append(time.perf_counter() - t)
    return float(np.median(times))


def op_table(content: bytes) -> list:
    """One row per operator: {'op', 'input', 'weight', 'output'} with the
    stored types ('int4', 'int8', 'int16', 'int32', 'float32', '-')."""
    g = read_graph(content)
    rows = []
    for op in g.ops:
        data = [t for t in op.inputs if t >= 0 and g.const(t) is None]
        consts = [t for t in op.inputs if t >= 0 and g.const(t) is not None]
        w = consts[0] if op.name in WEIGHT_OPS and consts else None
        if op.name in WEIGHT_OPS and len(op.inputs) > 1 and op.inputs[1] >= 0:
            w = op.inputs[1]
            p = g.producer(w)
            if p is not None and p.name == "DEQUANTIZE":   # weight-only layers
                w = p.inputs[0]
        rows.append({
            "op": op.name,
            "input": g.type_name(data[0]) if data else "-",
            "weight": g.type_name(w) if w is not None else "-",
            "output": g.type_name(op.outputs[0]) if op.outputs else "-"})
    return rows


def op_table_markdown(rows: list) -> str:
    lines = ["| # | op | input | weight | output |", "|---|---|---|---|---|"]
    for i, r in enumerate(rows):
        lines.append(f"| {i} | {r['op']} | {r['input']} | {r['weight']} | {r['output']} |")
    return "\n".join(lines)


def float_tflite(keras_model) -> bytes:
    """TFLiteConverter's float32 file of a tf_keras model."""
    from tfprec._tf import tf
    return bytes(tf.lite.TFLiteConverter.from_keras_model(keras_model).convert())


def tf_int8_ptq(keras_model, x, num_calibration: int = 200) -> bytes:
    """TensorFlow's own full-integer int8 post-training quantization of a
    tf_keras model: TFLiteConverter with Optimize.DEFAULT, a representative
    dataset (the first ``num_calibration`` examples of ``x``, one at a
    time; a list of arrays for a several-input model) and int8 builtin ops;
    float input and output."""
    from tfprec._tf import tf
    conv = tf.lite.TFLiteConverter.from_keras_model(keras_model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    parts = [a[:num_calibration] for a in _parts(x)]

    def rep():
        for i in range(len(parts[0])):
            yield [a[i:i + 1] for a in parts]
    conv.representative_dataset = rep
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return bytes(conv.convert())
