"""Checks of an exported model, read back through the LiteRT interpreter.

The interpreter is ``ai_edge_litert.interpreter.Interpreter`` (the public
LiteRT package; no private TensorFlow module).  ``check_weights`` compares
every stored kernel and bias with the plan's integer codes and scales;
``check_acts`` checks that a layer's quantized input, computed by a kernel
family, holds only codes of its B_A-bit grid with scale Delta_A, and how
often they equal the plan's numpy simulation.
"""
from __future__ import annotations

import functools

import numpy as np

from tfprec.export.flatbuffer import Builder
from tfprec.export.formats import Fmt
from tfprec.export.lower import tflite_kernel
from tfprec.export.report import LayerExport
from tfprec.fixedpoint import quantize_int


@functools.lru_cache(maxsize=None)
def bmm_honors_zero_point() -> bool:
    """Whether LiteRT's int8 x int8 -> int32 BATCH_MATMUL subtracts the input
    zero point (probed once on a 1x1 model)."""
    b = Builder()
    x = b.tensor("x", [1], np.int8, 1.0, -128)
    w = b.const("w", np.array([[1]], np.int8), np.int8, 1.0, 0)
    y = b.tensor("y", [1], np.int32)
    o = b.S.BatchMatMulOptionsT()
    b.op(b.BO.BATCH_MATMUL, [x, w], [y], b.BOPT.BatchMatMulOptions, o, 3)
    it = interpreter(b.finish([x], [y], "probe"), "ref")
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], np.array([[0]], np.int8))
    it.invoke()
    return int(it.get_tensor(it.get_output_details()[0]["index"])[0, 0]) == 128


def interpreter(content=None, resolver: str = "auto", path=None):
    """A LiteRT interpreter of a model (bytes ``content`` or file ``path``).

    ``resolver``: 'auto' (XNNPACK, the default CPU path), 'builtin' (the
    optimized builtin kernels without delegates) or 'ref' (the reference
    kernels, BUILTIN_REF).
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    kinds = {"auto": OpResolverType.AUTO,
             "builtin": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
             "ref": OpResolverType.BUILTIN_REF}
    return Interpreter(model_content=content, model_path=path,
                       experimental_op_resolver_type=kinds[resolver])


def run_probe(content: bytes, resolver: str, x: np.ndarray,
              batch_size: int = 256) -> dict:
    """Runs a model (the probe or the written file) on inputs ``x`` in
    batches of ``batch_size`` examples (the last one zero-padded); returns
    {output tensor index: value [N, ...]}."""
    it = interpreter(content, resolver)
    inp = it.get_input_details()[0]["index"]
    n = int(x.shape[0])
    bs = max(1, min(int(batch_size), n))
    it.resize_tensor_input(inp, [bs, *x.shape[1:]])
    it.allocate_tensors()
    outs: dict = {}
    for s in range(0, n, bs):
        xb = x[s:s + bs]
        m = xb.shape[0]
        if m < bs:
            xb = np.concatenate([xb, np.zeros((bs - m, *x.shape[1:]), x.dtype)])
        it.set_tensor(inp, xb)
        it.invoke()
        for d in it.get_output_details():
            outs.setdefault(d["index"], []).append(np.array(it.get_tensor(d["index"])[:m]))
    return {k: np.concatenate(v) for k, v in outs.items()}


def _qparams(detail):
    qp = detail["quantization_parameters"]
    return np.asarray(qp["scales"], np.float64), np.asarray(qp["zero_points"], np.int64)


def check_weights(it, details, rep: LayerExport, tens, op, fw, fa) -> bool:
    """Whether the kernel and bias of weight layer ``op``, as the interpreter
    ``it`` stores them, are exactly the plan's integer codes with scale
    Delta_W (int8 kernel), Delta_A*Delta_W (int32 bias), or are float32
    multiples of Delta_W holding the same codes."""
    ok = True
    kc = quantize_int(op.attrs["kernel"], fw.bits, fw.range, True)
    d = details[tens["kernel"]]
    v = it.get_tensor(tens["kernel"])
    scales, zps = _qparams(d)
    exp = kc if tens["kernel_layout"] == "keras" else tflite_kernel(op, kc)
    mul = int(tens.get("kernel_mul", 1))
    if rep.weight_dtype == "int8":
        # stored mul*code at scale Delta_W/mul (mul = 2^t, B_W + t <= 8):
        # the same values, exactly
        ok &= (v.dtype == np.int8 and scales.size == 1 and scales[0] * mul == fw.step
               and zps.size == 1 and zps[0] == 0
               and mul in [2 ** t for t in range(0, 9 - fw.bits)]
               and v.min() >= mul * fw.lo and v.max() <= mul * fw.hi
               and v.shape == exp.shape and np.array_equal(v.astype(np.int64), mul * exp))
    else:
        codes = v.astype(np.float64) / fw.step
        ok &= (v.dtype == np.float32 and scales.size == 0 and v.shape == exp.shape
               and np.array_equal(codes, np.round(codes))
               and np.array_equal(codes.astype(np.int64), exp))
    bias = op.attrs.get("bias")
    if bias is not None:
        bc = quantize_int(bias, fw.bits, fw.range, True)
        if "bias" not in tens:
            return False
        d = details[tens["bias"]]
        v = it.get_tensor(tens["bias"])
        scales, zps = _qparams(d)
        if rep.bias_dtype == "int32":
            # stored bmul*b + badd at scale Delta_A*Delta_W/bmul, b = the bias
            # in units of Delta_A*Delta_W (badd: the odd-accumulator 1 or the
            # positivity shift, both documented in tflite.py)
            bmul, badd = int(tens.get("bias_mul", 1)), int(tens.get("bias_add", 0))
            raw = (v.astype(np.int64) - badd).astype(np.float64)
            ok &= (v.dtype == np.int32 and scales.size == 1
                   and scales[0] * bmul == fa.step * fw.step and zps[0] == 0
                   and np.array_equal(raw * (fa.step / bmul), bc.astype(np.float64)))
        else:
            codes = v.astype(np.float64) / fw.step
            ok &= (v.dtype == np.float32 and np.array_equal(codes, bc.astype(np.float64)))
    return bool(ok)


def check_acts(values: dict, details, rep: LayerExport, tens, fa: Fmt, sim_codes):
    """(grid ok, match) for a layer's quantized input in ``values`` (one run
    of the probe model): ok when it has scale Delta_A and zero point of the
    B_A-bit format (int8) or is a float32 multiple of Delta_A, and holds only
    codes lo..hi; match is the fraction of codes equal to ``sim_codes``
    (the plan's numpy simulation), a probability."""
    t = tens["input"]
    d = details[t]
    v = values[t]
    scales, zps = _qparams(d)
    if rep.act_dtype == "int8":
        # stored mul*code + zp at scale Delta_A/mul (mul = 2: the doubled
        # input of a layer with 8-bit weights; zp -128 when 2*hi > 127)
        mul = int(tens.get("input_mul", 1))
        zp = fa.zp if mul == 1 else (-128 if 2 * fa.hi > 127 else 0)
        ok = (v.dtype == np.int8 and scales.size == 1 and scales[0] * mul == fa.step
              and zps.size == 1 and zps[0] == zp and mul in (1, 2))
        codes = v.astype(np.int64) - zp
        ok = bool(ok and np.all(codes % mul == 0))
        codes = codes // mul
    else:
        codes_f = v.astype(np.float64) / fa.step
        ok = (v.dtype == np.float32 and scales.size == 0
              and np.array_equal(codes_f, np.round(codes_f)))
        codes = np.round(codes_f).astype(np.int64)
    ok = bool(ok and codes.min() >= fa.lo and codes.max() <= fa.hi)
    match = float(np.mean(codes.reshape(sim_codes.shape) == sim_codes)) \
        if codes.size == sim_codes.size else 0.0
    return ok, match
