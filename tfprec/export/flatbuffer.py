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

    def finish(self, inputs, outputs, description: str, signature=None,
               metadata=None) -> bytes:
        """The model file (bytes) with this subgraph's ``inputs`` and
        ``outputs`` (tensor ids).

        ``signature``: (input names, output names), one name per input and
        output tensor; the file then has the SignatureDef ``serving_default``
        (what ``Interpreter.get_signature_runner()`` runs).  ``metadata``:
        {name: bytes} stored as flatbuffer metadata entries.
        """
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
        m.buffers = list(self.buffers)
        if signature is not None:
            in_names, out_names = signature
            if len(in_names) != len(inputs) or len(out_names) != len(outputs):
                raise ExportError(f"internal: signature names {in_names}, {out_names} do "
                                  f"not match {len(inputs)} inputs and {len(outputs)} "
                                  "outputs")
            sig = S.SignatureDefT()
            sig.signatureKey = "serving_default"
            sig.subgraphIndex = 0
            sig.inputs = [self._tensor_map(n, t) for n, t in zip(in_names, inputs)]
            sig.outputs = [self._tensor_map(n, t) for n, t in zip(out_names, outputs)]
            m.signatureDefs = [sig]
        if metadata:
            m.metadata = []
            for name, data in metadata.items():
                buf = S.BufferT()
                buf.data = np.frombuffer(bytes(data), np.uint8).copy()
                m.buffers.append(buf)
                md = S.MetadataT()
                md.name = name
                md.buffer = len(m.buffers) - 1
                m.metadata.append(md)
        fb = flatbuffers.Builder(1024)
        fb.Finish(m.Pack(fb), file_identifier=b"TFL3")
        return bytes(fb.Output())

    # -------------------------------------------------------------- helpers
    def _tensor_map(self, name: str, tensor: int):
        tm = self.S.TensorMapT()
        tm.name = str(name)
        tm.tensorIndex = int(tensor)
        return tm

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

    def round_to_grid(self, x: int, step: float, lo: int, hi: int, name: str) -> int:
        """float32 tensor x -> k*step with k = floor(x/step + 1/2) (ties
        upward, as the plan) saturated to lo..hi, by builtin float ops
        (exact: see the comment)."""
        BO = self.BO
        shp = self.shape_of(x)
        v = self.binary(BO.MUL, x, self.fconst(f"{name}/inv_step", 1.0 / step),
                        f"{name}/scaled", shp)
        # floor(v + 1/2) exactly (v + 1/2 itself could round in float32):
        # f = FLOOR(v), then +1 where v - f >= 1/2.  v - f is exact whenever
        # it is below 1/2 (it is a multiple of v's ulp), so the comparison
        # never errs.
        f = self.tensor(f"{name}/floor", shp, np.float32)
        self.op(BO.FLOOR, [v], [f])
        d = self.binary(BO.SUB, v, f, f"{name}/frac", shp)
        up = self.binary(BO.GREATER_EQUAL, d, self.fconst(f"{name}/half", 0.5),
                         f"{name}/up", shp, dtype=np.bool_)
        upf = self.tensor(f"{name}/up_f", shp, np.float32)
        opts = self.S.CastOptionsT()
        opts.inDataType = self.S.TensorType.BOOL
        opts.outDataType = self.S.TensorType.FLOAT32
        self.op(BO.CAST, [up], [upf], self.BOPT.CastOptions, opts)
        k = self.binary(BO.ADD, f, upf, f"{name}/code", shp)
        k = self.binary(BO.MAXIMUM, k, self.fconst(f"{name}/kmin", lo), f"{name}/code_lo", shp)
        k = self.binary(BO.MINIMUM, k, self.fconst(f"{name}/kmax", hi), f"{name}/code_hi", shp)
        return self.binary(BO.MUL, k, self.fconst(f"{name}/step", step), name, shp)
