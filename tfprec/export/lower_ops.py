"""Lowering of the non-weight ops of a parsed graph to TFLite operators.

:class:`OpLowering` is the part of :class:`tfprec.export.lower.Realizer`
that emits activations, pooling, global average pooling, reshapes, Add and
Concatenate (int8 when every input is int8 on one grid, else float32), and
the pooling / reshape operators the weight-layer lowering reuses.  It uses
the Realizer's builder (``self.b``), graph (``self.g``) and tensor maps
(``self.float_rep``, ``self.int8_rep``).
"""
from __future__ import annotations

import numpy as np

from tfprec.errors import ExportError


class OpLowering:
    """Non-weight operators of :class:`tfprec.export.lower.Realizer`."""

    def _int8_concat(self, op) -> bool:
        """An int8 CONCATENATION when every input of ``op`` is int8 on one
        grid (each producer requantized onto its consumer's grid); False
        otherwise (the float32 concatenation is used)."""
        reps = [self.int8_rep.get(i) for i in op.inputs]
        if any(r is None or r[0] is None for r in reps) or len({r[0] for r in reps}) != 1:
            return False
        b, S, BO = self.b, self.b.S, self.b.BO
        g = reps[0][0]
        gs, gz, _ = self.rep_of(g)
        y = b.tensor(op.name, [int(d) for d in self.g.shapes[op.output]], np.int8, gs, gz)
        o = S.ConcatenationOptionsT()
        o.axis = int(op.attrs["axis"])
        o.fusedActivationFunction = 0
        b.op(BO.CONCATENATION, [r[1] for r in reps], [y], b.BOPT.ConcatenationOptions,
             o, 2)
        self.int8_rep[op.output] = (g, y)
        return True

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
        if op.kind == "concat" and self._int8_concat(op):
            return
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
