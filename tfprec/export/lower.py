"""Lowering of a parsed graph and a plan to TFLite operators.

:class:`Realizer` walks the graph of :func:`tfprec.statistics.graph.parse_model`
and emits, through :class:`~tfprec.export.flatbuffer.Builder`, the operators
that compute the plan's fixed-point network (the realization rules are in
the docstring of :mod:`tfprec.export.tflite`).  ``build`` returns the model
file and a probe model that also outputs every weight layer's quantized
input, for the checks of :mod:`tfprec.export.checks`.
"""
from __future__ import annotations

import numpy as np

from tfprec.errors import ExportError
from tfprec.export.flatbuffer import Builder
from tfprec.export.formats import TIE_DIRECTION, Fmt, consumers, int8_chain
from tfprec.export.report import LayerExport
from tfprec.fixedpoint import quantize_int
from tfprec.statistics.graph import WEIGHT_KINDS


def tflite_kernel(op, k):
    """Keras kernel layout -> TFLite layout."""
    if op.kind == "dense":
        return np.ascontiguousarray(k.T)                    # [out, in]
    if op.kind == "conv2d":
        return np.ascontiguousarray(np.transpose(k, (3, 0, 1, 2)))  # [O, kh, kw, I]
    kh, kw, cin, m = k.shape
    return np.ascontiguousarray(k.reshape(1, kh, kw, cin * m))


class Realizer:
    """Lowers a parsed graph and a plan to TFLite operators."""

    def __init__(self, graph, fmts, bmm_zp: bool, kernels: str = "xnnpack"):
        self.tie_direction = TIE_DIRECTION[kernels]
        self.g = graph
        self.fmts = fmts
        self.b = Builder()
        self.cons = consumers(graph)
        self.bmm_zp = bmm_zp
        self.float_rep: dict = {}     # graph tensor id -> float32 TFLite tensor
        self.int8_rep: dict = {}      # graph tensor id -> (fmt, TFLite tensor)
        self.absorbed: set = set()    # names of ops realized inside an int8 chain
        self.layers: dict = {}        # name -> LayerExport
        self.tensors: dict = {}       # name -> dict of TFLite tensor ids
        self.quant_cache: dict = {}

    # ------------------------------------------------------------ float ops
    def _float(self, tid) -> int:
        if tid in self.float_rep:
            return self.float_rep[tid]
        if tid in self.int8_rep:
            fmt, t = self.int8_rep[tid]
            b = self.b
            out = b.tensor(b.tensors[t].name.decode() + "/dequant", b.shape_of(t), np.float32)
            b.op(b.BO.DEQUANTIZE, [t], [out], version=2)
            self.float_rep[tid] = out
            return out
        raise ExportError(f"internal: tensor {tid} has no representation")

    def _round_float(self, x: int, fmt: Fmt, name: str) -> int:
        """float x -> float codes*step on fmt (ties upward, saturating)."""
        b, BO = self.b, self.b.BO
        shp = b.shape_of(x)
        v = b.binary(BO.MUL, x, b.fconst(f"{name}/inv_step", 1.0 / fmt.step),
                     f"{name}/scaled", shp)
        # floor(v + 1/2) exactly (v + 1/2 itself could round in float32):
        # f = FLOOR(v), then +1 where v - f >= 1/2.  v - f is exact whenever
        # it is below 1/2 (it is a multiple of v's ulp), so the comparison
        # never errs.
        f = b.tensor(f"{name}/floor", shp, np.float32)
        b.op(BO.FLOOR, [v], [f])
        d = b.binary(BO.SUB, v, f, f"{name}/frac", shp)
        up = b.binary(BO.GREATER_EQUAL, d, b.fconst(f"{name}/half", 0.5), f"{name}/up",
                      shp, dtype=np.bool_)
        upf = b.tensor(f"{name}/up_f", shp, np.float32)
        opts = b.S.CastOptionsT()
        opts.inDataType = b.S.TensorType.BOOL
        opts.outDataType = b.S.TensorType.FLOAT32
        b.op(BO.CAST, [up], [upf], b.BOPT.CastOptions, opts)
        k = b.binary(BO.ADD, f, upf, f"{name}/code", shp)
        k = b.binary(BO.MAXIMUM, k, b.fconst(f"{name}/kmin", fmt.lo), f"{name}/code_lo", shp)
        k = b.binary(BO.MINIMUM, k, b.fconst(f"{name}/kmax", fmt.hi), f"{name}/code_hi", shp)
        return b.binary(BO.MUL, k, b.fconst(f"{name}/step", fmt.step), name, shp)

    def _input_for(self, op, fmt: Fmt):
        """(int8 tensor or None, float tensor or None) of op's quantized input."""
        tid = op.inputs[0]
        b = self.b
        if tid in self.int8_rep and self.int8_rep[tid][0] == fmt:
            return self.int8_rep[tid][1], None
        if (tid, fmt) in self.quant_cache:
            return self.quant_cache[(tid, fmt)]
        src = self._float(tid)
        if fmt.int8:
            qf = self._round_float(src, fmt, f"{op.name}/input_grid")
            q = b.tensor(f"{op.name}/input_q", b.shape_of(qf), np.int8, fmt.step, fmt.zp)
            b.op(b.BO.QUANTIZE, [qf], [q], version=2)
            res = (q, None)
        else:
            res = (None, self._round_float(src, fmt, f"{op.name}/input_q"))
        self.quant_cache[(tid, fmt)] = res
        return res

    # --------------------------------------------------------- weight layers
    def _weights(self, op, fw: Fmt):
        kc = quantize_int(op.attrs["kernel"], fw.bits, fw.range, True)
        bias = op.attrs.get("bias")
        bc = None if bias is None else quantize_int(bias, fw.bits, fw.range, True)
        return kc, bc

    def _conv_like(self, op, x, w, bias, out, int8: bool):
        b, S, BO = self.b, self.b.S, self.b.BO
        ins = [x, w] + ([bias] if bias is not None else [-1])
        if op.kind == "dense":
            o = S.FullyConnectedOptionsT()
            o.keepNumDims = False
            b.op(BO.FULLY_CONNECTED, ins, [out], b.BOPT.FullyConnectedOptions, o,
                 4 if int8 else 1)
            return
        pad = S.Padding.SAME if op.attrs["padding"] == "SAME" else S.Padding.VALID
        if op.kind == "conv2d":
            o = S.Conv2DOptionsT()
            code, ot, ver = BO.CONV_2D, b.BOPT.Conv2DOptions, 3 if int8 else 1
        else:
            o = S.DepthwiseConv2DOptionsT()
            o.depthMultiplier = int(op.attrs["kernel"].shape[3])
            code, ot, ver = BO.DEPTHWISE_CONV_2D, b.BOPT.DepthwiseConv2DOptions, 3 if int8 else 1
        o.padding = pad
        o.strideH, o.strideW = (int(s) for s in op.attrs["strides"])
        o.dilationHFactor = o.dilationWFactor = 1
        o.fusedActivationFunction = 0
        b.op(code, ins, [out], ot, o, ver)

    def weight_op(self, op, lp):
        b = self.b
        fw, fa = self.fmts[op.name]
        kc, bc = self._weights(op, fw)
        out_shape = self.g.shapes[op.output]
        rep = LayerExport(op.name, op.layer_class, op.kind, fw.bits, fa.bits, fw.step,
                          fa.step, fa.signed,
                          num_weights=int(kc.size + (0 if bc is None else bc.size)),
                          num_inputs=int(np.prod(self.g.shapes[op.inputs[0]])))
        self.layers[op.name] = rep
        tens = self.tensors[op.name] = {}

        int8_ok = fw.int8 and fa.int8
        bias_i32 = None
        bias_exact = True
        if int8_ok and bc is not None:
            scaled = bc.astype(np.float64) / fa.step
            bias_exact = bool(np.all(scaled == np.round(scaled))
                              and np.all(np.abs(scaled) < 2.0 ** 31))
            if bias_exact:
                bias_i32 = scaled.astype(np.int64)
        chain = None
        if int8_ok and bias_exact:
            chain = int8_chain(self.g, op, self.cons, self.fmts)
            if chain is not None:
                m = fa.step * fw.step / chain.fmt.step
                if not 2.0 ** -31 <= m < 2.0 ** 30:
                    chain = None
        if not int8_ok:
            path = "float"
        elif chain is not None:
            path = "int8"
        elif op.kind == "dense":
            path = "int32"
        else:
            path = "float"
        if int8_ok and not bias_exact:
            rep.notes.append(
                "bias codes are not integers in int32 at scale Delta_A*Delta_W "
                f"(Delta_A = {fa.step:g} > 1); bias added in float32")
        if int8_ok and path == "float":
            rep.notes.append("output feeds no single int8 grid (logits, average "
                             "pooling, add, concat, mixed formats) or its bias is "
                             "not int32-exact; computed in float32 from int8 operands")

        xq, xf = self._input_for(op, fa)
        tens["input"] = xq if xq is not None else xf
        rep.act_dtype = "int8" if xq is not None else "float32"

        if path == "int32":
            w = b.const(f"{op.name}/kernel", kc, np.int8, fw.step, 0)
            tens["kernel_layout"] = "keras"
        elif fw.int8:
            w = b.const(f"{op.name}/kernel", tflite_kernel(op, kc), np.int8, fw.step, 0)
            tens["kernel_layout"] = "tflite"
        else:
            w = b.const(f"{op.name}/kernel", tflite_kernel(op, kc) * fw.step,
                        np.float32)
            tens["kernel_layout"] = "tflite"
        rep.weight_dtype = "int8" if fw.int8 else "float32"
        tens["kernel"] = w

        if path == "int8":
            self._int8_layer(op, rep, tens, xq, w, bias_i32, fa, fw, chain, out_shape)
        elif path == "int32":
            self._int32_dense(op, rep, tens, xq, w, kc, bc, fa, fw, out_shape)
        else:
            self._float_layer(op, rep, tens, xq, xf, w, bc, fa, fw, out_shape)

    def _int8_layer(self, op, rep, tens, xq, w, bias_i32, fa, fw, chain, out_shape):
        """int8 kernel whose output is requantized onto the next layer's grid.

        TFLite kernels break rounding ties differently (reference: away from
        zero; XNNPACK: to even).  The plan rounds ties upward.  Two exact
        devices make every kernel agree with the plan:

        * the output tensor's scale is Delta*(1 - delta) with delta = 2^-23
          (a float32 number), so the kernel's multiplier is
          M*(1 + delta): a tie moves up by a hair while no other value
          crosses a rounding boundary (|accumulator + shift| * delta < 1);
          an int8 requantization (QUANTIZE or ADD) then relabels the scale
          to exactly Delta without changing any code;
        * on a grid with negative codes the bias is raised by K steps of the
          output (K = -lowest code, so every code that matters rounds from a
          positive value) and an int8 ADD of -K*Delta takes them back off.
        """
        b, BO = self.b, self.b.BO
        g = chain.fmt
        lo, hi = chain.clip
        klo = g.lo if lo is None else max(g.lo, min(g.hi, int(round(lo / g.step))))
        khi = g.hi if hi is None else max(g.lo, min(g.hi, int(round(hi / g.step))))
        ratio = g.step / (fa.step * fw.step)      # 2^s: accumulator units per step
        kc = np.asarray(tflite_kernel(op, self._weights(op, fw)[0]), np.int64)
        amax = max(abs(fa.lo), abs(fa.hi))
        per_out = (np.abs(kc).sum(axis=tuple(range(1, kc.ndim))) if op.kind != "depthwise"
                   else np.abs(kc).sum(axis=(0, 1, 2)))
        bias0 = np.zeros(per_out.shape, np.int64) if bias_i32 is None else bias_i32
        acc_bound = float(np.max(per_out * amax + np.abs(bias0)))
        shift_k, delta = 0, 0.0
        if ratio > 1:        # the kernel rounds: make ties go up
            shift_k = max(0, -klo)
            total = acc_bound + shift_k * ratio
            direction = self.tie_direction[op.kind]
            limit = 2.0 ** 23 if direction > 0 else 2.0 ** 22
            if total < limit:
                delta = direction * 2.0 ** -23
            else:
                rep.notes.append(
                    f"accumulator bound {total:.3g} >= {limit:.3g}: rounding ties "
                    "are left to the TFLite kernel")
        c = int(shift_k * ratio)
        if bias_i32 is not None or c:
            bvals = bias0 + c
            if np.any(np.abs(bvals) >= 2 ** 31):
                raise ExportError(f"layer {op.name!r}: int32 bias overflows")
            bias = b.const(f"{op.name}/bias", bvals, np.int32, fa.step * fw.step, 0)
            tens["bias"] = bias
            tens["bias_shift"] = c
            rep.bias_dtype = "int32"
        else:
            bias = None
            rep.bias_dtype = "none"
        z1 = g.zp if shift_k == 0 else -128
        s1 = float(np.float32(g.step * (1.0 - delta)))
        y = b.tensor(f"{op.name}/acc_requant", out_shape, np.int8, s1, z1)
        self._conv_like(op, xq, w, bias, y, True)
        if shift_k:
            k = b.const(f"{op.name}/unshift", np.array([-shift_k], np.int8), np.int8, g.step, 0)
            y = b.binary(BO.ADD, y, k, f"{op.name}/out", out_shape, np.int8, g.step,
                         g.zp, version=2)
        elif delta:
            out = b.tensor(f"{op.name}/out", out_shape, np.int8, g.step, g.zp)
            b.op(BO.QUANTIZE, [y], [out], version=2)
            y = out
        rep.compute = "int8"
        readers = sorted({c.name for c in self._chain_end_consumers(op, chain)})
        rep.output = "int8 on the input grid of " + ", ".join(readers)
        # the composed clip: activation clip, then the next format's clip
        shp = out_shape
        if klo + g.zp > -128:
            c = b.const(f"{op.name}/out_min", np.int8(klo + g.zp), np.int8, g.step, g.zp)
            y = b.binary(BO.MAXIMUM, y, c, f"{op.name}/out_lo", shp, np.int8,
                         g.step, g.zp, version=2)
        if khi + g.zp < 127:
            c = b.const(f"{op.name}/out_max", np.int8(khi + g.zp), np.int8, g.step, g.zp)
            y = b.binary(BO.MINIMUM, y, c, f"{op.name}/out_hi", shp, np.int8,
                         g.step, g.zp, version=2)
        cur = op.output
        self.int8_rep[cur] = (g, y)
        for c in chain.ops:
            self.absorbed.add(c.name)
            if c.kind == "maxpool":
                out = b.tensor(c.name, self.g.shapes[c.output], np.int8, g.step, g.zp)
                self._pool(c, y, out, version=2)
                y = out
            elif c.kind == "reshape":
                y = self._reshape(c, y, np.int8, g.step, g.zp)
            # act (clip applied above) and identity: same tensor
            self.int8_rep[c.output] = (g, y)

    def _chain_end_consumers(self, op, chain):
        t = chain.ops[-1].output if chain.ops else op.output
        return self.cons.get(t, [])

    def _int32_dense(self, op, rep, tens, xq, w, kc, bc, fa, fw, out_shape):
        """int8 x int8 BATCH_MATMUL -> exact int32 accumulator -> float32."""
        b, BO, S = self.b, self.b.BO, self.b.S
        acc = b.tensor(f"{op.name}/acc", out_shape, np.int32)
        o = S.BatchMatMulOptionsT()
        o.adjX = False
        o.adjY = False
        b.op(BO.BATCH_MATMUL, [xq, w], [acc], b.BOPT.BatchMatMulOptions, o, 3)
        if fa.zp != 0 and not self.bmm_zp:
            # the int32 kernel multiplied (k + zp) by the weights: subtract zp * colsum
            corr = (-fa.zp * kc.sum(axis=0)).astype(np.int64)
            tens["acc_offset"] = corr
            acc = b.binary(BO.ADD, acc, b.const(f"{op.name}/zp_correction", corr, np.int32),
                           f"{op.name}/acc_corrected", out_shape, np.int32)
        accf = b.tensor(f"{op.name}/acc_f", out_shape, np.float32)
        co = S.CastOptionsT()
        co.inDataType = S.TensorType.INT32
        co.outDataType = S.TensorType.FLOAT32
        b.op(BO.CAST, [acc], [accf], b.BOPT.CastOptions, co)
        y = b.binary(BO.MUL, accf, b.fconst(f"{op.name}/acc_step", fa.step * fw.step),
                     f"{op.name}/matmul", out_shape)
        if bc is not None:
            tens["bias"] = b.const(f"{op.name}/bias", bc * fw.step, np.float32)
            rep.bias_dtype = "float32"
            y = b.binary(BO.ADD, y, tens["bias"], f"{op.name}/out", out_shape)
        else:
            rep.bias_dtype = "none"
        rep.compute = "int8"
        rep.output = "int32 -> float32"
        self.float_rep[op.output] = y

    def _float_layer(self, op, rep, tens, xq, xf, w, bc, fa, fw, out_shape):
        b, BO = self.b, self.b.BO
        x = xf
        if x is None:
            x = b.tensor(f"{op.name}/input_dequant", b.shape_of(xq), np.float32)
            b.op(BO.DEQUANTIZE, [xq], [x], version=2)
        wf = w
        if fw.int8:
            wf = b.tensor(f"{op.name}/kernel_dequant", b.tensors[w].shape, np.float32,
                          batch=False)
            b.op(BO.DEQUANTIZE, [w], [wf], version=2)
        bias = None
        if bc is not None:
            bias = b.const(f"{op.name}/bias", bc * fw.step, np.float32)
            tens["bias"] = bias
            rep.bias_dtype = "float32"
        else:
            rep.bias_dtype = "none"
        y = b.tensor(f"{op.name}/out", out_shape, np.float32)
        self._conv_like(op, x, wf, bias, y, False)
        rep.compute = "float32"
        rep.output = "float32"
        if not (fw.int8 and fa.int8):
            above = [n for n, f in (("weights", fw), ("input", fa)) if not f.int8]
            rep.notes.append(f"{' and '.join(above)} above 8 bits: computed in "
                             "float32 on the exact planned grid")
        self.float_rep[op.output] = y

    # ------------------------------------------------------- other float ops
    def _pool(self, op, x, out, version=1):
        b, S, BO = self.b, self.b.S, self.b.BO
        o = S.Pool2DOptionsT()
        o.padding = S.Padding.SAME if op.attrs["padding"] == "SAME" else S.Padding.VALID
        o.strideH, o.strideW = (int(s) for s in op.attrs["strides"])
        o.filterHeight, o.filterWidth = (int(s) for s in op.attrs["ksize"])
        o.fusedActivationFunction = 0
        code = BO.MAX_POOL_2D if op.kind == "maxpool" else BO.AVERAGE_POOL_2D
        b.op(code, [x], [out], b.BOPT.Pool2DOptions, o, version)

    def _reshape(self, op, x, dtype, scale=None, zp=0):
        b, S, BO = self.b, self.b.S, self.b.BO
        shp = [int(d) for d in self.g.shapes[op.output]]
        out = b.tensor(op.name, shp, dtype, scale, zp)
        sh = b.const(f"{op.name}/shape", np.array([-1] + shp, np.int32), np.int32)
        o = S.ReshapeOptionsT()
        o.newShape = np.array([-1] + shp, np.int32)
        b.op(BO.RESHAPE, [x, sh], [out], b.BOPT.ReshapeOptions, o)
        return out

    def float_op(self, op):
        b, S, BO = self.b, self.b.S, self.b.BO
        ins = [self._float(i) for i in op.inputs]
        x = ins[0]
        shp = [int(d) for d in self.g.shapes[op.output]]
        if op.kind == "act":
            y = x
            if op.attrs.get("fn") == "relu":
                lo, hi = op.attrs.get("low"), op.attrs.get("high")
                if lo == 0.0 and hi is None:
                    y = b.tensor(op.name, shp, np.float32)
                    b.op(BO.RELU, [x], [y])
                elif lo == 0.0 and hi == 6.0:
                    y = b.tensor(op.name, shp, np.float32)
                    b.op(BO.RELU6, [x], [y])
                else:
                    if lo is not None:
                        y = b.binary(BO.MAXIMUM, y, b.fconst(f"{op.name}/lo", lo),
                                     f"{op.name}/max", shp)
                    if hi is not None:
                        y = b.binary(BO.MINIMUM, y, b.fconst(f"{op.name}/hi", hi),
                                     f"{op.name}/min", shp)
        elif op.kind in ("maxpool", "avgpool"):
            y = b.tensor(op.name, shp, np.float32)
            self._pool(op, x, y)
        elif op.kind == "gap":
            y = b.tensor(op.name, shp, np.float32)
            axes = b.const(f"{op.name}/axes", np.array([1, 2], np.int32), np.int32)
            o = S.ReducerOptionsT()
            o.keepDims = bool(op.attrs.get("keepdims", False))
            b.op(BO.MEAN, [x, axes], [y], b.BOPT.ReducerOptions, o)
        elif op.kind == "reshape":
            y = self._reshape(op, x, np.float32)
        elif op.kind == "identity":
            y = x
        elif op.kind == "add":
            y = ins[0]
            for k, other in enumerate(ins[1:]):
                y = b.binary(BO.ADD, y, other, f"{op.name}/{k}" if k < len(ins) - 2
                             else op.name, shp)
        elif op.kind == "concat":
            y = b.tensor(op.name, shp, np.float32)
            o = S.ConcatenationOptionsT()
            o.axis = int(op.attrs["axis"])
            o.fusedActivationFunction = 0
            b.op(BO.CONCATENATION, ins, [y], b.BOPT.ConcatenationOptions, o)
        else:
            raise ExportError(f"layer {op.name!r}: op kind {op.kind!r} cannot be "
                              "exported to TFLite")
        self.float_rep[op.output] = y

    # ---------------------------------------------------------------- build
    def build(self, plan_by_name) -> bytes:
        b = self.b
        x = b.tensor("input", self.g.shapes[self.g.input_id], np.float32)
        self.float_rep[self.g.input_id] = x
        for op in self.g.ops:
            if op.name in self.absorbed:
                continue
            if op.kind in WEIGHT_KINDS:
                self.weight_op(op, plan_by_name[op.name])
            else:
                self.float_op(op)
        out = self._float(self.g.output_id)
        ident = b.tensor("logits", self.g.shapes[self.g.output_id], np.float32)
        # a named output tensor (RESHAPE to the same shape) keeps the output
        # distinct from any constant or intermediate tensor
        shp = [int(d) for d in self.g.shapes[self.g.output_id]]
        sh = b.const("logits/shape", np.array([-1] + shp, np.int32), np.int32)
        o = b.S.ReshapeOptionsT()
        o.newShape = np.array([-1] + shp, np.int32)
        b.op(b.BO.RESHAPE, [out, sh], [ident], b.BOPT.ReshapeOptions, o)
        content = b.finish([x], [ident], "tfprec fixed-point export")
        # the same model with every layer's quantized input as an extra
        # output, so the check can read them under any kernel (delegates
        # do not keep intermediate tensors)
        extra = sorted({t["input"] for t in self.tensors.values()})
        probe = b.finish([x], [ident] + extra, "tfprec fixed-point export (probe)")
        return content, probe
