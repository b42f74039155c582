"""Writer of TFLite flatbuffers over the LiteRT schema.

The schema classes come from ``ai_edge_litert.schema_py_generated`` (the
public LiteRT package), packed with ``flatbuffers``.  :class:`Builder`
collects the tensors, constant buffers and operators of one subgraph and
writes a model file (``bytes``).
"""
from __future__ import annotations

import numpy as np

from tfprec.errors import ExportError


def schema():
    """The LiteRT flatbuffer schema module (ExportError if not installed)."""
    try:
        import flatbuffers  # noqa: F401
        from ai_edge_litert import schema_py_generated
    except ImportError as e:  # pragma: no cover - depends on the installation
        raise ExportError("the TFLite export needs the ai-edge-litert and "
                          f"flatbuffers packages: {e}") from e
    return schema_py_generated


class Builder:
    """Collects tensors, buffers and operators of one TFLite subgraph."""

    def __init__(self):
        self.S = schema()
        S = self.S
        self.BO = S.BuiltinOperator
        self.BOPT = S.BuiltinOptions
        self.types = {np.dtype(np.float32): S.TensorType.FLOAT32,
                      np.dtype(np.int8): S.TensorType.INT8,
                      np.dtype(np.int32): S.TensorType.INT32,
                      np.dtype(np.bool_): S.TensorType.BOOL}
        self.buffers = [S.BufferT()]
        self.tensors = []
        self.ops = []
        self.codes: dict = {}
        self.names: set = set()

    def _name(self, name: str) -> str:
        base, i = name, 1
        while name in self.names:
            i += 1
            name = f"{base}_{i}"
        self.names.add(name)
        return name

    def tensor(self, name, shape, dtype, scale=None, zp=0, batch=True) -> int:
        """An activation tensor of per-example ``shape`` (batch dim added)."""
        S = self.S
        t = S.TensorT()
        t.name = self._name(name)
        dims = [int(d) for d in shape]
        if batch:
            t.shape = np.array([1] + dims, np.int32)
            t.shapeSignature = np.array([-1] + dims, np.int32)
        else:
            t.shape = np.array(dims, np.int32)
        t.type = self.types[np.dtype(dtype)]
        t.buffer = 0
        if scale is not None:
            t.quantization = self._qparams(scale, zp)
        self.tensors.append(t)
        return len(self.tensors) - 1

    def const(self, name, data, dtype, scale=None, zp=0) -> int:
        S = self.S
        arr = np.ascontiguousarray(np.asarray(data).astype(dtype))
        b = S.BufferT()
        b.data = np.frombuffer(arr.tobytes(), np.uint8).copy()
        self.buffers.append(b)
        t = S.TensorT()
        t.name = self._name(name)
        t.shape = np.array(arr.shape, np.int32)
        t.type = self.types[np.dtype(dtype)]
        t.buffer = len(self.buffers) - 1
        if scale is not None:
            t.quantization = self._qparams(scale, zp)
        self.tensors.append(t)
        return len(self.tensors) - 1

    def _qparams(self, scale, zp):
        q = self.S.QuantizationParametersT()
        q.scale = np.atleast_1d(np.asarray(scale, np.float32))
        q.zeroPoint = np.atleast_1d(np.asarray(zp, np.int64))
        q.quantizedDimension = 0
        return q

    def op(self, code, inputs, outputs, opt_type=0, opts=None, version=1):
        key = (int(code), int(version))
        if key not in self.codes:
            self.codes[key] = len(self.codes)
        o = self.S.OperatorT()
        o.opcodeIndex = self.codes[key]
        o.inputs = np.array(inputs, np.int32)
        o.outputs = np.array(outputs, np.int32)
        o.builtinOptionsType = opt_type
        o.builtinOptions = opts
        self.ops.append(o)
        return outputs[0] if len(outputs) == 1 else outputs

    def finish(self, inputs, outputs, description: str) -> bytes:
        import flatbuffers
        S = self.S
        codes = [None] * len(self.codes)
        for (c, v), i in self.codes.items():
            oc = S.OperatorCodeT()
            oc.builtinCode = c
            oc.deprecatedBuiltinCode = min(c, 127)
            oc.version = v
            codes[i] = oc
        sg = S.SubGraphT()
        sg.tensors = self.tensors
        sg.inputs = np.array(inputs, np.int32)
        sg.outputs = np.array(outputs, np.int32)
        sg.operators = self.ops
        sg.name = "main"
        m = S.ModelT()
        m.version = 3
        m.description = description
        m.operatorCodes = codes
        m.subgraphs = [sg]
        m.buffers = self.buffers
        fb = flatbuffers.Builder(1024)
        fb.Finish(m.Pack(fb), file_identifier=b"TFL3")
        return bytes(fb.Output())

    # -------------------------------------------------------------- helpers
    def shape_of(self, t) -> tuple:
        return tuple(int(d) for d in self.tensors[t].shape[1:])

    def binary(self, code, a, b, name, shape, dtype=np.float32, scale=None, zp=0,
               version=1):
        S = self.S
        out = self.tensor(name, shape, dtype, scale, zp)
        opts_map = {self.BO.ADD: (self.BOPT.AddOptions, S.AddOptionsT),
                    self.BO.SUB: (self.BOPT.SubOptions, S.SubOptionsT),
                    self.BO.MUL: (self.BOPT.MulOptions, S.MulOptionsT)}
        if code in opts_map:
            ot, cls = opts_map[code]
            self.op(code, [a, b], [out], ot, cls(), version)
        elif code in (self.BO.MAXIMUM, self.BO.MINIMUM):
            self.op(code, [a, b], [out], self.BOPT.MaximumMinimumOptions,
                    S.MaximumMinimumOptionsT(), version)
        elif code == self.BO.GREATER_EQUAL:
            self.op(code, [a, b], [out], self.BOPT.GreaterEqualOptions,
                    S.GreaterEqualOptionsT(), version)
        else:
            self.op(code, [a, b], [out], 0, None, version)
        return out

    def fconst(self, name, value) -> int:
        return self.const(name, np.float32(value), np.float32)
