"""Running TFLite files under each LiteRT kernel family, latency, per-op
dtype tables, and the TensorFlow reference files (float, int8 PTQ) that
:mod:`tfprec.export.aeq` reports next to its own file.
"""
from __future__ import annotations

import time

import numpy as np

from tfprec.export.aeq_recipe import RESOLVER, WEIGHT_OPS, read_graph
from tfprec.export.checks import interpreter


def run_family(content: bytes, x: np.ndarray, family: str,
               batch_size: int = 256) -> np.ndarray:
    """Outputs (float64 [N, ...]) of a one-input TFLite model on ``x`` under
    kernel family ``family`` ('xnnpack', 'optimized', 'reference').  Inputs
    of an integer model are quantized with its input scale / zero point and
    outputs dequantized."""
    it = interpreter(content, RESOLVER[family])
    inp = it.get_input_details()[0]
    n = int(x.shape[0])
    bs = max(1, min(batch_size, n))
    it.resize_tensor_input(inp["index"], [bs, *x.shape[1:]])
    it.allocate_tensors()
    out = it.get_output_details()[0]
    outs = []
    for s in range(0, n, bs):
        xb = x[s:s + bs]
        m = xb.shape[0]
        if m < bs:
            xb = np.concatenate([xb, np.zeros((bs - m, *x.shape[1:]), xb.dtype)])
        it.set_tensor(inp["index"], _to_input(xb, inp))
        it.invoke()
        outs.append(_from_output(it.get_tensor(out["index"])[:m], out))
    return np.concatenate(outs) if outs else np.zeros((0,))


def _to_input(x, detail):
    dt = np.dtype(detail["dtype"])
    if dt.kind == "f":
        return x.astype(dt)
    scale, zp = detail["quantization"]
    info = np.iinfo(dt)
    return np.clip(np.round(x / scale) + zp, info.min, info.max).astype(dt)


def _from_output(y, detail):
    dt = np.dtype(detail["dtype"])
    if dt.kind == "f":
        return np.asarray(y, np.float64)
    scale, zp = detail["quantization"]
    return (np.asarray(y, np.float64) - zp) * scale


def median_latency(content: bytes, x: np.ndarray, family: str = "xnnpack",
                   repeats: int = 200, warmup: int = 10) -> float:
    """Median wall time (seconds) of one single-example invoke (batch 1,
    one thread), over ``repeats`` runs cycling through ``x``."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    kinds = {"xnnpack": OpResolverType.AUTO,
             "optimized": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
             "reference": OpResolverType.BUILTIN_REF}
    it = Interpreter(model_content=content, num_threads=1,
                     experimental_op_resolver_type=kinds[family])
    inp = it.get_input_details()[0]
    it.resize_tensor_input(inp["index"], [1, *x.shape[1:]])
    it.allocate_tensors()
    feeds = [_to_input(x[i % len(x)][None], inp) for i in range(min(len(x), 64))]
    times = []
    for r in range(warmup + repeats):
        it.set_tensor(inp["index"], feeds[r % len(feeds)])
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


def tf_int8_ptq(keras_model, x: np.ndarray, num_calibration: int = 200) -> bytes:
    """TensorFlow's own full-integer int8 post-training quantization of a
    tf_keras model: TFLiteConverter with Optimize.DEFAULT, a representative
    dataset (the first ``num_calibration`` examples of ``x``, one at a
    time) and int8 builtin ops; float input and output."""
    from tfprec._tf import tf
    conv = tf.lite.TFLiteConverter.from_keras_model(keras_model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    xs = np.asarray(x[:num_calibration], np.float32)

    def rep():
        for i in range(len(xs)):
            yield [xs[i:i + 1]]
    conv.representative_dataset = rep
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return bytes(conv.convert())
