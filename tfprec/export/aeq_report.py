"""Report and read-back checks of the ai_edge_quantizer export
(:mod:`tfprec.export.aeq`), and the TensorFlow reference rows (float file,
TF's full-integer int8 post-training quantization) it is compared with."""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional

import numpy as np

from tfprec.errors import ExportError
from tfprec.export import runtime
from tfprec.export.report import ExportReport

METADATA_NAME = "tfprec"


@dataclasses.dataclass
class AeqLayer:
    """One weight layer of an ai_edge_quantizer export.

    Attributes:
      name, kind: Keras layer name and graph kind ('dense', 'conv2d',
        'depthwise').
      weight_bits, act_bits, act_signed: the plan's B_W, B_A (bits) and
        input signedness; weight_step, act_step: Delta_W, Delta_A.
      weight_type: storage type chosen ('int4', 'int8', 'float', ...).
      act_type: type of the layer's input as computed ('int8', 'int16',
        'float': weight-only or float layer).
      families: kernel families on which the combination is verified.
      stored_weight, stored_input, stored_output: types read back from the
        file.
      weights_grid_ok: the kernel (and bias) dequantized equal the snapped
        weights exactly, with every scale exactly Delta_W.
      act_grid_ok: the input tensor is stored with scale Delta_A and the
        zero point of the format (or is float fed by such a tensor).
      notes: substitutions and other remarks.
    """

    name: str
    kind: str
    weight_bits: int
    act_bits: int
    act_signed: bool
    weight_step: float
    act_step: float
    weight_type: str
    act_type: str = ""
    families: list = dataclasses.field(default_factory=list)
    stored_weight: str = ""
    stored_input: str = ""
    stored_output: str = ""
    weights_grid_ok: bool = False
    act_grid_ok: bool = False
    notes: list = dataclasses.field(default_factory=list)

    @property
    def grid_check_passed(self) -> bool:
        return bool(self.weights_grid_ok and self.act_grid_ok)


@dataclasses.dataclass
class AeqExportReport(ExportReport):
    """:class:`~tfprec.export.report.ExportReport` of the ai_edge_quantizer
    backend.  ``layers`` are :class:`AeqLayer`; ``agreement_by_kernels`` is
    the fraction of check examples (probability) whose decision equals the
    fake-quant model's (:func:`tfprec.quantize_model`) per kernel family.

    Extra attributes:
      backend: 'ai_edge_quantizer'.
      activation_type: 'int8' or 'int16' (the whole network).
      op_table: one row per operator of the file: {'op', 'input', 'weight',
        'output'} stored types.
      substitutions: formats that differ from the plan's bit-widths (wider
        storage, float weights), one line each.
      accuracy_by_kernels: accuracy (fraction) per family when labels were
        given; fake_quant_accuracy: the fake-quant model's on the same.
      exact_families: families whose decisions equal the fake-quant model's
        on every check example.
      verified_families: families on which every layer's kernel
        combination is verified exact (:data:`~tfprec.export.aeq_recipe.VERIFIED`).
      unavailable_families: {family: operator} for the families whose op
        resolver lacks an operator of the file (LiteRT's reference kernels
        have no ELU), so the file was not run there; never XNNPACK (the
        default CPU path) nor ``kernels``, which must run it.
      kernels: the family the tie rounding was tuned for.
      mode: 'exact' (the plan's clips tune the ties), 'fast'
        (``exact_ties=False``) or 'integer' (``full_integer=True``).
      latency_s: median single-example latency (seconds, XNNPACK, 1 thread).
      baselines: rows for TF's float file and its int8 PTQ file (see
        :func:`baseline_rows`).
    """

    backend: str = "ai_edge_quantizer"
    activation_type: str = "int8"
    mode: str = "exact"
    op_table: list = dataclasses.field(default_factory=list)
    substitutions: list = dataclasses.field(default_factory=list)
    accuracy_by_kernels: dict = dataclasses.field(default_factory=dict)
    fake_quant_accuracy: Optional[float] = None
    exact_families: list = dataclasses.field(default_factory=list)
    verified_families: list = dataclasses.field(default_factory=list)
    unavailable_families: dict = dataclasses.field(default_factory=dict)
    latency_s: Optional[float] = None
    baselines: list = dataclasses.field(default_factory=list)

    def to_markdown(self) -> str:
        pct = lambda v: "-" if v is None else f"{100 * v:.2f}%"  # noqa: E731
        lines = [f"### LiteRT export (ai_edge_quantizer): `{os.path.basename(self.path)}`", "",
                 f"- mode: {self.mode}; activations: {self.activation_type}; grid checks passed: "
                 f"{'yes' if self.grid_check_passed else '**NO**'}",
                 f"- decisions equal to the fake-quant model on {self.check_examples} "
                 "examples: " + ", ".join(f"{k} {pct(v)}" for k, v in
                                           self.agreement_by_kernels.items()),
                 f"- decisions exact on kernel families: {self.exact_families or 'none'}; "
                 f"combinations verified on: {self.verified_families}; ties tuned for "
                 f"{self.kernels}"]
        if self.unavailable_families:
            lines.append("- not run on: " + ", ".join(
                f"{k} (no {v} operator)" for k, v in self.unavailable_families.items()))
        if self.accuracy_by_kernels:
            lines.append(f"- accuracy: fake-quant {pct(self.fake_quant_accuracy)}; "
                         + ", ".join(f"{k} {pct(v)}" for k, v in
                                     self.accuracy_by_kernels.items()))
        rows = [("ai_edge_quantizer (this file)", self.file_size_bytes,
                 self.accuracy_by_kernels.get("xnnpack"), self.latency_s)]
        rows += [(b["name"], b["size_bytes"], b.get("accuracy"), b.get("latency_s"))
                 for b in self.baselines]
        lines += ["", "| file | size (bytes) | accuracy (xnnpack) | median latency |",
                  "|---|---|---|---|"]
        for nm, size, acc, lat in rows:
            lines.append(f"| {nm} | {'-' if size is None else size} | {pct(acc)} | "
                         f"{'-' if lat is None else f'{1e6 * lat:.0f} us'} |")
        lines += ["", "| layer | B_W | B_A | weights | input | families verified | "
                  "weight grid | input grid |", "|---|---|---|---|---|---|---|---|"]
        for l in self.layers:
            lines.append(f"| {l.name} | {l.weight_bits} | "
                         f"{'ids' if l.act_bits is None else l.act_bits}"
                         f"{'' if l.act_bits is None else 's' if l.act_signed else 'u'} | "
                         f"{l.stored_weight} | "
                         f"{l.stored_input} | {', '.join(l.families)} | "
                         f"{'yes' if l.weights_grid_ok else 'NO'} | "
                         f"{'yes' if l.act_grid_ok else 'NO'} |")
        lines += ["", "Operators of the file:", "", runtime.op_table_markdown(self.op_table)]
        for b in self.baselines:
            lines += ["", f"Operators of {b['name']}:", "",
                      b["error"] if "error" in b else runtime.op_table_markdown(b["op_table"])]
        notes = list(self.substitutions) + list(self.notes)
        if notes:
            lines += [""] + [f"- {n}" for n in notes]
        return "\n".join(lines) + "\n"


def baseline_rows(model, xs, xc, ys, latency: bool, names=None) -> list:
    """Rows for TF's float32 file and TF's full-integer int8 PTQ file of
    ``model`` (BatchNorm folded, logits output): name, size_bytes,
    op_table, accuracy on (xc, ys) under XNNPACK, latency_s, content."""
    from tfprec.quantization.apply import fold_batchnorm, logits_model
    km = logits_model(fold_batchnorm(model, split_softmax=True))
    rows = []
    for name, make in (("TF float32", lambda: runtime.float_tflite(km)),
                       ("TF int8 PTQ", lambda: runtime.tf_int8_ptq(km, xs))):
        try:
            content = make()
        except Exception as e:  # noqa: BLE001 - a reference row, reported
            rows.append({"name": name, "size_bytes": None, "op_table": [],
                         "error": f"{type(e).__name__}: {str(e)[:200]}"})
            continue
        row = {"name": name, "size_bytes": len(content),
               "op_table": runtime.op_table(content), "content": content}
        if ys is not None and len(xc):
            out = runtime.run_family(content, xc, "xnnpack", names=names)
            m = min(len(ys), len(out))
            row["accuracy"] = float(np.mean(np.argmax(out[:m], -1) == ys[:m]))
        if latency and len(xs):
            row["latency_s"] = runtime.median_latency(content, xs, "xnnpack", names=names)
        rows.append(row)
    return rows


# --------------------------------------------------------------------------
# Read-back checks
# --------------------------------------------------------------------------
def tensor_values(g, t: int) -> np.ndarray:
    """Stored integer / float values of constant tensor ``t`` in its shape
    (INT4: two's-complement nibbles, low nibble first)."""
    tt = g.tensors[t]
    raw = np.frombuffer(g.buffer_bytes(tt.buffer) or b"", np.uint8)
    shape = [int(d) for d in tt.shape]
    kind = g.type_name(t)
    n = int(np.prod(shape))
    if kind == "int4":
        lo = (raw & 0x0F).astype(np.int16)
        hi = (raw >> 4).astype(np.int16)
        v = np.stack([lo, hi], -1).reshape(-1)[:n]
        return np.where(v >= 8, v - 16, v).reshape(shape)
    dt = {"int8": np.int8, "int16": np.int16, "int32": np.int32, "int64": np.int64,
          "float32": np.float32}[kind]
    return raw.view(dt).reshape(shape)


def _qp(g, t: int):
    q = g.tensors[t].quantization
    if q is None or q.scale is None:
        return None, None
    return np.asarray(q.scale, np.float64), np.asarray(q.zeroPoint, np.int64)


def _rounded_in_float(g, t: int, step: float) -> bool:
    """Whether float tensor ``t`` is the output of the explicit rounding of
    :class:`tfprec.export.aeq_recipe.PlanRound`: through its MAXIMUM (or a
    ReLU) and reshapes the converter moved behind it, a MUL by the constant
    step of FLOOR(...), or the FLOOR itself for a step of 1."""
    p = g.producer(t)
    while p is not None and p.name in ("MAXIMUM", "RELU", "RESHAPE", "SQUEEZE",
                                       "EXPAND_DIMS"):
        runtime_in = [i for i in p.inputs if i >= 0 and g.const(i) is None]
        p = g.producer(runtime_in[0]) if len(runtime_in) == 1 else None
    if p is not None and p.name == "FLOOR" and step == 1.0:
        return True         # a step of 1: the converter drops the MUL by 1
    if p is None or p.name != "MUL":
        return False
    consts = [tensor_values(g, i) for i in p.inputs if g.const(i) is not None]
    runtime_in = [i for i in p.inputs if g.const(i) is None]
    if len(consts) != 1 or consts[0].size != 1 or float(consts[0].reshape(-1)[0]) != step:
        return False
    f = g.producer(runtime_in[0]) if runtime_in else None
    return f is not None and f.name == "FLOOR"


def check_file(g, layers, snapped, fmts, kinds, wide_to_8, ordinal: dict,
               input_eps=None) -> None:
    """Fills every :class:`AeqLayer`'s stored types and grid flags from the
    quantized file's graph ``g``; ``ordinal``: {layer name: position of its
    operator among the file's FULLY_CONNECTED / CONV_2D / DEPTHWISE_CONV_2D
    operators} for the layers that have one; ``input_eps``: {layer name:
    eps} for layers whose input scale is Delta_A*(1-eps) and weight scale
    Delta_W*(1+eps) (ties nudged without a float clip; the codes, and the
    bias codes on Delta_A*Delta_W, are still the plan's exactly).  The other
    weight ops (float32 operators the converter writes its own way) are
    checked in the float
    model (weights snapped, explicit rounding) and by the decision checks;
    their flags say so in a note."""
    from tfprec.export.aeq_recipe import WEIGHT_OPS, tflite_kernel, tflite_steps
    wops = [op for op in g.ops if op.name in WEIGHT_OPS]
    for l in layers:
        if l.name not in ordinal:
            l.stored_weight = l.stored_input = l.stored_output = "float32"
            l.weights_grid_ok = l.act_grid_ok = True
            l.notes.append("float32 operator as the converter writes it: weights snapped and input rounded in the float model before conversion, checked by the decision checks")
            continue
        op = wops[ordinal[l.name]]
        fw, fa = fmts[l.name]
        step = fw.steps(8 if (wide_to_8 and fw.bits > 8) else None)
        w = op.inputs[1]
        p = g.producer(w)
        if p is not None and p.name == "DEQUANTIZE":
            w = p.inputs[0]
        l.stored_weight = g.type_name(w)
        data = op.inputs[0]
        l.stored_input = g.type_name(data)
        l.stored_output = g.type_name(op.outputs[0])
        kern = tflite_kernel(kinds[l.name], snapped[l.name][0]).astype(np.float64)
        step = tflite_steps(kinds[l.name], kern, step)      # per channel
        vals = tensor_values(g, w).astype(np.float64)
        scales, zps = _qp(g, w)
        eps = float((input_eps or {}).get(l.name, 0.0))
        if l.stored_weight == "float32":
            ok = vals.size == kern.size and np.array_equal(vals.reshape(kern.shape), kern)
        else:
            ok = (scales is not None and _same_scale(scales, step * (1.0 + eps), bool(eps))
                  and np.all(zps == 0)
                  and vals.shape == kern.shape and np.array_equal(vals * step, kern))
        if len(snapped[l.name]) > 1 and len(op.inputs) > 2 and op.inputs[2] >= 0:
            b = op.inputs[2]
            bp = g.producer(b)
            if bp is not None and bp.name == "DEQUANTIZE":
                b = bp.inputs[0]
            bv = tensor_values(g, b).astype(np.float64)
            bs, _ = _qp(g, b)
            if g.type_name(b) != "float32":     # codes on Delta_A*Delta_W (per channel)
                if eps:                          # the stored scale is nudged: the plan's
                    bs = fa.step * step
                bs = np.reshape(bs, -1)
                bv = bv.reshape(-1) * (bs if bs.size == bv.size else bs[0])
            same = np.array_equal(bv.reshape(-1),
                                  snapped[l.name][1].astype(np.float64).reshape(-1))
            if not same and l.act_type == "float" and g.type_name(b) == "float32":
                # a float operator: the converter folded a following constant
                # add / scale into its float32 bias (exact float arithmetic;
                # the decision checks compare the result)
                l.notes.append("float32 bias merged by the converter with the constant "
                               "operator that follows (e.g. the +3 of hard-sigmoid)")
            else:
                ok = ok and same
        l.weights_grid_ok = bool(ok)
        # input grid: the integer tensor feeding the op (through DEQUANTIZE
        # for float layers), or the explicit float rounding
        src = data
        dp = g.producer(data)
        if l.stored_input == "float32" and dp is not None and dp.name == "DEQUANTIZE":
            src = dp.inputs[0]
        kind = g.type_name(src)
        if kind == "float32":
            l.act_grid_ok = _rounded_in_float(g, src, fa.step)
            continue
        s, z = _qp(g, src)
        want_zp = -128 if (kind == "int8" and not fa.signed) else 0
        l.act_grid_ok = bool(kind in ("int8", "int16") and s is not None and s.size == 1
                             and _same_scale(s, fa.step * (1.0 - eps), bool(eps))
                             and z[0] == want_zp)


def _same_scale(stored, want, nudged: bool) -> bool:
    """Stored float32 scale(s) equal to ``want`` (float64, broadcast): exactly
    for the plan's powers of two; a ``nudged`` scale Delta*(1 -+ 2^-k) to the
    float32 rounding of the quantizer's min/max arithmetic (2^-22)."""
    stored = np.asarray(stored, np.float64).reshape(-1)
    want = np.asarray(want, np.float64).reshape(-1)
    if want.size not in (1, stored.size):
        return False
    tol = 2.0 ** -22 if nudged else 0.0
    return bool(np.all(np.abs(stored - want) <= tol * np.abs(want)))


# --------------------------------------------------------------------------
# Metadata
# --------------------------------------------------------------------------
def with_metadata(content: bytes, report) -> bytes:
    """``content`` with a ``tfprec`` metadata entry (JSON: backend, kernel
    families on which decisions matched the fake-quant model, formats)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as S
    m = S.ModelT.InitFromPackedBuf(bytearray(content), 0)
    for buf in m.buffers:       # buffers stored after the flatbuffer: inline them
        off, size = int(getattr(buf, "offset", 0) or 0), int(getattr(buf, "size", 0) or 0)
        if off > 1 and size > 0:
            buf.data = np.frombuffer(content[off:off + size], np.uint8)
            buf.offset, buf.size = 0, 0
    meta = {"backend": "ai_edge_quantizer", "mode": report.mode,
            "activation_type": report.activation_type,
            "kernels": report.kernels, "exact_families": report.exact_families,
            "unavailable_families": report.unavailable_families,
            "verified_families": report.verified_families,
            "agreement_by_kernels": report.agreement_by_kernels,
            "layers": {l.name: {"weight_bits": l.weight_bits, "act_bits": l.act_bits,
                                "weight_type": l.weight_type, "act_type": l.act_type}
                       for l in report.layers}}
    buf = S.BufferT()
    buf.data = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    m.buffers.append(buf)
    md = S.MetadataT()
    md.name = METADATA_NAME
    md.buffer = len(m.buffers) - 1
    m.metadata = (m.metadata or []) + [md]
    b = flatbuffers.Builder(len(content) + 4096)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def read_metadata(path_or_content) -> dict:
    """The ``tfprec`` metadata (a dict) of a file written by :func:`export_aeq`."""
    from ai_edge_litert import schema_py_generated as S
    content = path_or_content
    if isinstance(content, (str, os.PathLike)):
        with open(content, "rb") as f:
            content = f.read()
    m = S.ModelT.InitFromPackedBuf(bytearray(content), 0)
    for md in m.metadata or []:
        nm = md.name.decode() if isinstance(md.name, bytes) else md.name
        if nm == METADATA_NAME:
            return json.loads(bytes(m.buffers[md.buffer].data).decode())
    raise ExportError("the file has no tfprec metadata")
