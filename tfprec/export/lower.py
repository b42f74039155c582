"""Lowering of a parsed graph and a plan to TFLite operators.

:class:`Realizer` walks the graph of :func:`tfprec.statistics.graph.parse_model`
and emits, through :class:`~tfprec.export.flatbuffer.Builder`, the operators
that compute the plan's fixed-point network (the realization rules are in
the docstring of :mod:`tfprec.export.tflite`).  ``build`` returns the model
file (with the ``serving_default`` signature; :meth:`Realizer.file` adds
metadata) and a probe model that also outputs every weight layer's
quantized input, for the checks of :mod:`tfprec.export.checks`.  Each
weight layer's :class:`~tfprec.export.report.LayerExport` records the
kernel families on which it is exact by construction (``exact_on``).
"""
from __future__ import annotations

import numpy as np

from tfprec.errors import ExportError
from tfprec.export.flatbuffer import Builder
from tfprec.export.formats import (FAMILIES, LOWERED_WEIGHT_KINDS, TIE_DIRECTION,  # noqa: F401
                                   Fmt, consumers, exact_int8_output, fused_clip,
                                   int8_chain, rounded_chain, tflite_kernel, w_out)
from tfprec.export.lower_ops import OpLowering
from tfprec.export.report import LayerExport
from tfprec.fixedpoint import quantize_int
from tfprec.statistics.graph import WEIGHT_KINDS


class Realizer(OpLowering):
    """Lowers a parsed graph and a plan to TFLite operators (the weight
    layers here; the other ops in :class:`~tfprec.export.lower_ops.OpLowering`)."""

    def __init__(self, graph, fmts, bmm_zp: bool, kernels: str = "xnnpack",
                 io_names=("input", "logits"), round_pooled_outputs: bool = False):
        self.tie_direction = TIE_DIRECTION[kernels]
        self.round_pooled = bool(round_pooled_outputs)
        # input formats stored as 2*code at scale Delta_A/2: those of a layer
        # with 8-bit weights (2*weights would not fit int8) and <= 7-bit
        # input, so that its accumulator can be made odd (see _int8_layer)
        self.double_fmts = {fmts[op.name][1] for op in graph.weight_ops
                            if op.kind in LOWERED_WEIGHT_KINDS
                            and fmts[op.name][0].bits == 8 and fmts[op.name][1].bits <= 7}
        self.io_names = (str(io_names[0]), str(io_names[1]))
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
            name = b.tensors[t].name
            name = name.decode() if isinstance(name, bytes) else str(name)
            out = b.tensor(name + "/dequant", b.shape_of(t), np.float32)
            b.op(b.BO.DEQUANTIZE, [t], [out], version=2)
            self.float_rep[tid] = out
            return out
        raise ExportError(f"internal: tensor {tid} has no representation")

    def _round_float(self, x: int, fmt: Fmt, name: str) -> int:
        """float x -> float codes*step on fmt (ties upward, saturating)."""
        return self.b.round_to_grid(x, fmt.step, fmt.lo, fmt.hi, name)

    def rep_of(self, fmt: Fmt) -> tuple:
        """(scale, zero point, mul) of the int8 tensor holding codes of the
        <= 8-bit format ``fmt``: the stored value is mul*code + zp, mul = 2
        for the formats in ``double_fmts`` (then the scale is Delta/2)."""
        if fmt not in self.double_fmts:
            return fmt.step, fmt.zp, 1
        return fmt.step / 2, (-128 if 2 * fmt.hi > 127 else 0), 2

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
            scale, zp, _ = self.rep_of(fmt)
            q = b.tensor(f"{op.name}/input_q", b.shape_of(qf), np.int8, scale, zp)
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

    def _conv_like(self, op, x, w, bias, out, int8: bool, fused: int = 0):
        b, S, BO = self.b, self.b.S, self.b.BO
        ins = [x, w] + ([bias] if bias is not None else [-1])
        if op.kind == "dense":
            o = S.FullyConnectedOptionsT()
            o.keepNumDims = False
            o.fusedActivationFunction = int(fused)
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
        o.fusedActivationFunction = int(fused)
        b.op(code, ins, [out], ot, o, ver)

    def _acc_bound(self, op, kc, fa: Fmt, bias_acc=None) -> float:
        """Largest |accumulator| of op in units of Delta_A*Delta_W: sum over
        a dot product of |weight code| * largest |input code| plus |bias|
        (bias_acc: bias in accumulator units, or None)."""
        k = np.abs(np.asarray(tflite_kernel(op, kc), np.float64))
        per_out = (k.sum(axis=(0, 1, 2)) if op.kind == "depthwise"
                   else k.sum(axis=tuple(range(1, k.ndim))))
        amax = float(max(abs(fa.lo), abs(fa.hi)))
        b = 0.0 if bias_acc is None else np.abs(np.asarray(bias_acc, np.float64))
        return float(np.max(per_out * amax + b))

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
        # weights may be stored as 2^t * code at scale Delta_W / 2^t (the same
        # values; int8 holds them while B_W + t <= 8); the int32 bias is then
        # in units of Delta_A*Delta_W / 2^t and must be an integer there
        t_max = max(0, 8 - fw.bits)
        t_bias, bias_q = 0, None
        bias_exact = True
        if int8_ok and bc is not None:
            bias_exact = False
            for t in range(t_max + 1):
                scaled = bc.astype(np.float64) * 2.0 ** t / fa.step
                if np.all(scaled == np.round(scaled)) and np.all(np.abs(scaled) < 2.0 ** 29):
                    t_bias, bias_q, bias_exact = t, scaled.astype(np.int64), True
                    break
        acc_bound = self._acc_bound(
            op, kc, fa, None if bc is None else bc.astype(np.float64) / fa.step)
        chain = exact_out = None
        t_use, odd, rounded = t_bias, False, False
        # the input is stored as amul*code (rep_of): amul = 2 doubles the
        # accumulator as 2x weights would
        amul = self.rep_of(fa)[2] if fa.int8 else 1
        if int8_ok and bias_exact:
            chain = int8_chain(self.g, op, self.cons, self.fmts)
            if chain is None:
                exact_out = exact_int8_output(self.g, self.cons, op,
                                              fa.step * fw.step / amul,
                                              acc_bound * amul, t_bias)
                if exact_out is None and self.round_pooled and op.kind != "dense":
                    chain = rounded_chain(self.g, self.cons, op,
                                          acc_bound * fa.step * fw.step)
                    rounded = chain is not None
            if chain is not None:
                # 2^s0 = output step / unit of the integer accumulator N
                ratio0 = chain.fmt.step / (fa.step * fw.step) * 2 ** t_bias
                t_odd = t_bias + 2 - amul
                if not 2.0 ** -31 <= 2 ** t_bias / ratio0 < 2.0 ** 30:
                    chain = None
                elif (ratio0 > 1 and t_odd <= t_max
                      and 2.0 ** t_odd * amul * acc_bound + 1 < 2.0 ** 22):
                    t_use, odd = t_odd, True   # odd-accumulator requantization
        wmul = 2 ** t_use
        bias_u = None if bias_q is None else bias_q * amul * 2 ** (t_use - t_bias)
        if not int8_ok:
            path = "float"
        elif chain is not None:
            path = "int8"
        elif exact_out is not None:
            path = "int8_exact"
        elif op.kind == "dense":
            path = "int32"
        else:
            path = "float"
        if int8_ok and not bias_exact:
            rep.notes.append(
                "bias codes are not integers in int32 at scale Delta_A*Delta_W/2^t "
                f"for any t <= {t_max} (Delta_A = {fa.step:g}); bias added in float32")
        if int8_ok and path == "float":
            rep.notes.append(
                "output feeds no single int8 grid (average pooling, add, concat, "
                "mixed formats) and its range does not fit int8 codes at scale "
                "Delta_A*Delta_W (or its bias is not int32-exact): computed in "
                "float32 from int8 operands, exactly")

        xq, xf = self._input_for(op, fa)
        tens["input"] = xq if xq is not None else xf
        tens["input_mul"] = amul if xq is not None else 1
        rep.act_dtype = "int8" if xq is not None else "float32"

        tens["kernel_mul"] = wmul
        if path == "int32":
            w = b.const(f"{op.name}/kernel", wmul * kc, np.int8, fw.step / wmul, 0)
            tens["kernel_layout"] = "keras"
        elif fw.int8:
            w = b.const(f"{op.name}/kernel", wmul * tflite_kernel(op, kc), np.int8,
                        fw.step / wmul, 0)
            tens["kernel_layout"] = "tflite"
        else:
            w = b.const(f"{op.name}/kernel", tflite_kernel(op, kc) * fw.step,
                        np.float32)
            tens["kernel_layout"] = "tflite"
        rep.weight_dtype = "int8" if fw.int8 else "float32"
        tens["kernel"] = w

        if path == "int8":
            self._int8_layer(op, rep, tens, xq, w, bias_u, fa, fw, chain, out_shape,
                             wmul, acc_bound, odd, amul)
            if rounded:
                t = chain.ops[-1].output if chain.ops else op.output
                readers = sorted({c.kind for c in self.cons.get(t, [])}) or ["the logits"]
                rep.output = (f"int8 rounded to step {chain.fmt.step:g} (not in the "
                              "plan), dequantized for " + ", ".join(readers))
                rep.notes.append(
                    f"round_pooled_outputs: the output is rounded to step "
                    f"{chain.fmt.step:g} (256 codes covering its clipped range) "
                    "before " + ", ".join(readers) + "; this rounding is not in the "
                    "plan (identical on every kernel family); see the measured "
                    "agreement")
                rep.exact_on = ()
        elif path == "int8_exact":
            self._int8_exact_layer(op, rep, tens, xq, w, bias_u, fa, fw, exact_out,
                                   out_shape, wmul * amul)
        elif path == "int32":
            self._int32_dense(op, rep, tens, xq, w, wmul * kc, bc, bias_u, fa, fw,
                              out_shape, wmul, amul)
        else:
            self._float_layer(op, rep, tens, xq, xf, w, bc, fa, fw, out_shape,
                              acc_bound)

    def _int8_exact_layer(self, op, rep, tens, xq, w, bias_i32, fa, fw, exact_out,
                          out_shape, wmul: int = 1):
        """int8 kernel whose int8 output has scale Delta_A*Delta_W: the
        requantization multiplier is 1, so the output codes are the
        accumulator itself (exact on every kernel family); int8 saturation and
        MAXIMUM / MINIMUM realize the activation clip."""
        b, BO = self.b, self.b.BO
        ops, lo, hi, zp = exact_out
        unit = fa.step * fw.step / wmul
        bias = None
        rep.bias_dtype = "none"
        if bias_i32 is not None:
            bias = b.const(f"{op.name}/bias", bias_i32, np.int32, unit, 0)
            tens["bias"] = bias
            tens["bias_mul"], tens["bias_add"] = wmul, 0
            rep.bias_dtype = "int32"
        y = b.tensor(f"{op.name}/out", out_shape, np.int8, unit, zp)
        self._conv_like(op, xq, w, bias, y, True)
        if lo + zp > -128:
            c = b.const(f"{op.name}/out_min", np.int8(lo + zp), np.int8, unit, zp)
            y = b.binary(BO.MAXIMUM, y, c, f"{op.name}/out_lo", out_shape, np.int8,
                         unit, zp, version=2)
        if hi + zp < 127:
            c = b.const(f"{op.name}/out_max", np.int8(hi + zp), np.int8, unit, zp)
            y = b.binary(BO.MINIMUM, y, c, f"{op.name}/out_hi", out_shape, np.int8,
                         unit, zp, version=2)
        self.int8_rep[op.output] = (None, y)
        for c in ops:
            self.absorbed.add(c.name)
            self.int8_rep[c.output] = (None, y)
        t = ops[-1].output if ops else op.output
        readers = sorted({c.kind for c in self.cons.get(t, [])}) or ["the logits"]
        rep.compute = "int8"
        rep.output = (f"int8 at scale Delta_A*Delta_W/{wmul} = {unit:g} (exact, values "
                      f"{lo}..{hi}), dequantized for " + ", ".join(readers))
        rep.exact_on = FAMILIES

    def _int8_layer(self, op, rep, tens, xq, w, bias_u, fa, fw, chain, out_shape,
                    wmul: int = 1, acc_bound: float = 0.0, odd: bool = False,
                    amul: int = 1):
        """int8 kernel whose output is requantized onto the next layer's grid.

        The plan rounds N / 2^s0 to nearest with ties upward (N: the
        accumulator in the unit u = Delta_A*Delta_W/2^t0 where the bias is
        an integer; 2^s0 = Delta_out / u).  The weights are stored as
        wmul*code at scale Delta_W/wmul, the input as amul*code at scale
        Delta_A/amul (:meth:`rep_of`), and ``bias_u`` is the bias in the
        kernel's unit Delta_A*Delta_W/(wmul*amul).  With ``odd``,
        wmul*amul = 2^(t0+1), so the kernel's accumulator is 2N; the bias
        gets + 1, so the kernel sees the odd A = 2N + 1, and the output
        scale is Delta*(1 + 2^-23), so the multiplier is
        2^-(s0+1)*(1 - 2^-23): no value is a rounding tie (ties are even
        multiples of 2^s0), the gemmlowp first rounding step (a
        multiplication by 1 - 2^-23 rounded to an integer) is the identity,
        and every kernel family gives floor(N/2^s0 + 1/2) while |A| < 2^22;
        an int8 QUANTIZE then relabels the scale to exactly Delta (or
        Delta/2 for a doubled consumer input) without changing a code.
        Otherwise (8-bit weights and input, or a larger accumulator) the
        older device, exact on the family named by ``kernels`` only:

        * the output tensor's scale is Delta*(1 - delta) with delta = +-2^-23,
          so a tie moves up by a hair (single-rounding kernels) or the
          first of two roundings becomes a no-op (double-rounding ones);
        * on a grid with negative codes the bias is raised by K steps of the
          output (K = -lowest code, so every code that matters is rounded
          from a positive value) and an int8 ADD of -K*Delta takes them back
          off.
        """
        b, BO = self.b, self.b.BO
        g = chain.fmt
        lo, hi = chain.clip
        klo = g.lo if lo is None else max(g.lo, min(g.hi, int(round(lo / g.step))))
        khi = g.hi if hi is None else max(g.lo, min(g.hi, int(round(hi / g.step))))
        unit = fa.step * fw.step / (wmul * amul)  # accumulator unit
        ratio = g.step / unit                      # accumulator units per step
        bias0 = (np.zeros(w_out(op, self.b.tensors[w].shape), np.int64)
                 if bias_u is None else np.asarray(bias_u, np.int64))
        shift_k, delta, badd = 0, 0.0, 0
        if odd:
            badd = 1
            s1 = float(np.float32(g.step * (1.0 + 2.0 ** -23)))
            z1 = g.zp
            rep.exact_on = FAMILIES
            rep.notes.append(f"odd-accumulator requantization (weights stored as "
                             f"{wmul}*code at scale Delta_W/{wmul}, input as "
                             f"{amul}*code at scale Delta_A/{amul}, bias 2N+1): "
                             "exact on every kernel family")
        else:
            rep.exact_on = FAMILIES
            if ratio > 1:        # the kernel rounds: make ties go up
                shift_k = max(0, -klo)
                total = acc_bound * wmul * amul + shift_k * ratio
                direction = self.tie_direction[op.kind]
                limit = 2.0 ** 23 if direction > 0 else 2.0 ** 22
                if total < limit:
                    delta = direction * 2.0 ** -23
                    rep.exact_on = tuple(f for f in FAMILIES
                                         if TIE_DIRECTION[f][op.kind] == direction)
                    why = ("8-bit weights" if fw.bits > 7 else
                           f"accumulator bound {acc_bound:.3g} too large for the "
                           "odd-accumulator requantization")
                    rep.notes.append(
                        f"{why}: requantization rounding tuned for the kernels "
                        f"'{', '.join(rep.exact_on)}' (exact there; other kernel "
                        "families can land one step off on rounding ties)")
                else:
                    rep.exact_on = ()
                    rep.notes.append(
                        f"accumulator bound {total:.3g} >= {limit:.3g}: rounding ties "
                        "are left to the TFLite kernel (exact on no family by "
                        "construction)")
            badd = int(shift_k * ratio)
            s1 = float(np.float32(g.step * (1.0 - delta)))
            z1 = g.zp if shift_k == 0 else -128
        bvals = bias0 + badd
        if bias_u is not None or np.any(bvals != 0):
            if np.any(np.abs(bvals) >= 2 ** 31):
                raise ExportError(f"layer {op.name!r}: int32 bias overflows")
            bias = b.const(f"{op.name}/bias", bvals, np.int32, unit, 0)
            tens["bias"] = bias
            tens["bias_mul"], tens["bias_add"] = wmul * amul, badd
            rep.bias_dtype = "int32"
        else:
            bias = None
            rep.bias_dtype = "none"
        # the composed clip [klo, khi] (activation clip, then the next
        # format's): int8 saturation, a fused activation of the kernel, and
        # MAXIMUM / MINIMUM for what remains
        gs, gz, gm = self.rep_of(g)        # how the consumer stores its input
        if shift_k == 0 and s1 == g.step:
            s1, z1 = gs, gz                  # nothing rounds: write it directly
        # [elo, ehi]: the codes int8 saturation (and a fused activation)
        # already clip to; MAXIMUM / MINIMUM do the rest of [klo, khi]
        fused, elo, ehi = 0, -128 - g.zp, 127 - g.zp
        if shift_k == 0 and s1 != gs:
            # the kernel's output is relabelled anyway: give it the zero
            # point at which int8 saturation is the upper clip
            z1 = int(min(127, max(-128, 127 - khi)))
            fused, elo, ehi = fused_clip(g.step, z1, klo, khi)
        elif gm != 1:
            # stored 2*code + zp: a saturated odd value is no code, so both
            # clips are explicit
            elo, ehi = -2 ** 20, 2 ** 20
        elif shift_k == 0:
            fused, elo, ehi = fused_clip(g.step, z1, klo, khi)
        y = b.tensor(f"{op.name}/acc_requant", out_shape, np.int8, s1, z1)
        self._conv_like(op, xq, w, bias, y, True, fused)
        if shift_k:
            k = b.const(f"{op.name}/unshift", np.array([-shift_k], np.int8), np.int8, g.step, 0)
            y = b.binary(BO.ADD, y, k, f"{op.name}/out", out_shape, np.int8, g.step,
                         g.zp, version=2)
            s1, z1 = g.step, g.zp
        if s1 != gs or z1 != gz:
            # an exact relabel: the multiplier s1 / gs is gm * (1 + 2^-23) or gm
            out = b.tensor(f"{op.name}/out_q", out_shape, np.int8, gs, gz)
            b.op(BO.QUANTIZE, [y], [out], version=2)
            y = out
        rep.compute = "int8"
        readers = sorted({c.name for c in self._chain_end_consumers(op, chain)})
        if chain.concat is not None:
            readers = [f"{r} (through {chain.concat.name})" for r in readers]
        rep.output = "int8 on the input grid of " + ", ".join(readers)
        shp = out_shape
        if klo > elo:
            c = b.const(f"{op.name}/out_min", np.int8(gm * klo + gz), np.int8, gs, gz)
            y = b.binary(BO.MAXIMUM, y, c, f"{op.name}/out_lo", shp, np.int8,
                         gs, gz, version=2)
        if khi < ehi:
            c = b.const(f"{op.name}/out_max", np.int8(gm * khi + gz), np.int8, gs, gz)
            y = b.binary(BO.MINIMUM, y, c, f"{op.name}/out_hi", shp, np.int8,
                         gs, gz, version=2)
        cur = op.output
        self.int8_rep[cur] = (g, y)
        for c in chain.ops:
            self.absorbed.add(c.name)
            if c.kind == "maxpool":
                out = b.tensor(c.name, self.g.shapes[c.output], np.int8, gs, gz)
                self._pool(c, y, out, version=2)
                y = out
            elif c.kind == "reshape":
                y = self._reshape(c, y, np.int8, gs, gz)
            # act (clip applied above) and identity: same tensor
            self.int8_rep[c.output] = (g, y)

    def _chain_end_consumers(self, op, chain):
        if chain.concat is not None:
            return self.cons.get(chain.concat.output, [])
        t = chain.ops[-1].output if chain.ops else op.output
        return self.cons.get(t, [])

    def _int32_dense(self, op, rep, tens, xq, w, kc, bc, bias_i32, fa, fw, out_shape,
                     wmul: int = 1, amul: int = 1):
        """int8 x int8 BATCH_MATMUL -> exact int32 accumulator (+ int32 bias)
        -> float32 (exact below 2^24 accumulator units)."""
        b, BO, S = self.b, self.b.BO, self.b.S
        acc = b.tensor(f"{op.name}/acc", out_shape, np.int32)
        o = S.BatchMatMulOptionsT()
        o.adjX = False
        o.adjY = False
        b.op(BO.BATCH_MATMUL, [xq, w], [acc], b.BOPT.BatchMatMulOptions, o, 3)
        zp_in = self.rep_of(fa)[1]
        if zp_in != 0 and not self.bmm_zp:
            # the int32 kernel multiplied (k + zp) by the weights: subtract zp * colsum
            corr = (-zp_in * kc.sum(axis=0)).astype(np.int64)
            tens["acc_offset"] = corr
            acc = b.binary(BO.ADD, acc, b.const(f"{op.name}/zp_correction", corr, np.int32),
                           f"{op.name}/acc_corrected", out_shape, np.int32)
        if bias_i32 is not None:
            tens["bias"] = b.const(f"{op.name}/bias", bias_i32, np.int32,
                                   fa.step * fw.step / (wmul * amul), 0)
            tens["bias_mul"], tens["bias_add"] = wmul * amul, 0
            rep.bias_dtype = "int32"
            acc = b.binary(BO.ADD, acc, tens["bias"], f"{op.name}/acc_biased", out_shape,
                           np.int32)
        accf = b.tensor(f"{op.name}/acc_f", out_shape, np.float32)
        co = S.CastOptionsT()
        co.inDataType = S.TensorType.INT32
        co.outDataType = S.TensorType.FLOAT32
        b.op(BO.CAST, [acc], [accf], b.BOPT.CastOptions, co)
        y = b.binary(BO.MUL, accf, b.fconst(f"{op.name}/acc_step",
                                            fa.step * fw.step / (wmul * amul)),
                     f"{op.name}/matmul", out_shape)
        if bias_i32 is not None:
            pass
        elif bc is not None:
            tens["bias"] = b.const(f"{op.name}/bias", bc * fw.step, np.float32)
            rep.bias_dtype = "float32"
            y = b.binary(BO.ADD, y, tens["bias"], f"{op.name}/out", out_shape)
        else:
            rep.bias_dtype = "none"
        rep.compute = "int8"
        rep.output = "int32 -> float32"
        amax = float(max(abs(fa.lo), abs(fa.hi))) * amul
        bound = float(np.max(np.abs(kc).sum(axis=0) * amax
                             + (0 if bias_i32 is None else np.abs(bias_i32))))
        if bound < 2.0 ** 24:
            rep.exact_on = FAMILIES
        else:
            rep.exact_on = ()
            rep.notes.append(f"accumulator bound {bound:.3g} >= 2^24: its float32 "
                             "conversion may round (exact on no family by construction)")
        self.float_rep[op.output] = y

    def _float_layer(self, op, rep, tens, xq, xf, w, bc, fa, fw, out_shape,
                     acc_bound: float = 0.0):
        """float32 kernel on the planned grids (DEQUANTIZEd int8 operands or
        float32 grid values): exact while every partial sum is a float32
        integer multiple of the finest step, i.e. below 2^24 of them."""
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
        # bound in units of the finest of Delta_A*Delta_W and Delta_W (bias)
        unit = min(fa.step * fw.step, fw.step if bc is not None else np.inf)
        bmax = 0.0 if bc is None else float(np.max(np.abs(bc))) * fw.step / unit
        bound = acc_bound * fa.step * fw.step / unit + bmax
        if bound < 2.0 ** 24:
            rep.exact_on = FAMILIES
        else:
            rep.exact_on = ()
            rep.notes.append(f"float32 accumulation bound {bound:.3g} >= 2^24 units: "
                             "sums may round (exact on no family by construction)")
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
                if op.kind not in LOWERED_WEIGHT_KINDS:
                    raise ExportError(
                        f"layer {op.name!r} ({op.layer_class}): weight layers of kind "
                        f"{op.kind!r} cannot be exported to TFLite; the exporter "
                        f"lowers {', '.join(LOWERED_WEIGHT_KINDS)} layers")
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
        self._io = (x, ident)
        content = self.file()
        # the same model with every layer's quantized input as an extra
        # output, so the check can read them under any kernel (delegates
        # do not keep intermediate tensors)
        extra = sorted({t["input"] for t in self.tensors.values()})
        self.probe = b.finish([x], [ident] + extra, "tfprec fixed-point export (probe)")
        return content, self.probe

    def file(self, metadata: dict = None) -> bytes:
        """The model file: one input, one output, the SignatureDef
        ``serving_default`` (input and output named after the Keras model's),
        and ``metadata`` ({name: bytes}) as flatbuffer metadata."""
        x, ident = self._io
        return self.b.finish([x], [ident], "tfprec fixed-point export",
                             signature=([self.io_names[0]], [self.io_names[1]]),
                             metadata=metadata)
