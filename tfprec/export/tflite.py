"""TFLite export that realizes a precision plan exactly.

:func:`export_tflite` writes a ``.tflite`` flatbuffer whose arithmetic is the
fixed-point network of a :class:`~tfprec.planning.plan.PrecisionPlan` (METHOD.md
section 1): every weight layer's (BatchNorm-folded) kernel and bias are on the
planned B_W-bit grid and its input activation on the planned B_A-bit grid.

Why the flatbuffer is written directly.  ``tf.lite.TFLiteConverter`` does not
keep sub-8-bit fake-quant grids (TFMOT issues 574 and 950).  Feeding it 8-bit
``fake_quant_with_min_max_vars`` nodes whose ranges make the int8 scale
exactly Delta does give exact per-tensor scales (with
``_experimental_disable_per_channel``) when the fake-quant sits right after
each conv/dense, but a conv whose output has no fake-quant stays float, the
logits are requantized to int8, and there is no control over rounding.  So
tfprec writes the TFLite model itself with the LiteRT schema
(``ai_edge_litert.schema_py_generated``, :mod:`tfprec.export.flatbuffer`) and
reads every tensor back through ``ai_edge_litert.interpreter.Interpreter``
to check it (:mod:`tfprec.export.checks`).

Realization, per weight layer (Dense, Conv2D, DepthwiseConv2D):

* B_W <= 8 and B_A <= 8 ("int8 compute"): weights int8 with one scale per
  tensor and zero point 0, stored as the code k (scale Delta_W) or as 2^t*k
  (scale Delta_W/2^t, the same values; int8 holds them while B_W + t <= 8);
  input int8 with scale Delta_A and zero point 0 (signed formats, and
  unsigned ones up to 7 bits: the stored value is the code) or -128 (8-bit
  unsigned), or as 2*code at scale Delta_A/2 (below: the input of a layer
  with 8-bit weights; zero point -128 when 2*code can exceed 127); bias
  int32 at the scale input*kernel, holding the plan's bias
  exactly (t is raised until it is an integer there).  Then, by where the
  output goes:

  - onto the next weight layer's input grid, when only ReLU / clipping
    activations, max-pooling, flattening, dropout or one Concatenate (whose
    every input then arrives on that grid; it runs as an int8
    CONCATENATION) lie in between: they commute with rounding.  The
    kernel's int8 requantization does the plan's rounding (below); the
    activation clip and the next format's clip come from int8 saturation
    (the kernel's output gets the zero point that puts the upper clip at
    127), a fused RELU / RELU6 / RELU_N1_TO_1 whose bounds are codes of the
    grid, and int8 MAXIMUM / MINIMUM for what remains;
  - otherwise (average pooling, global average pooling, Add, Concatenate,
    the logits, a tensor feeding layers of different formats): when the
    activation-clipped output, whose reachable range follows from the clip
    and from the weights, fits 256 int8 codes at scale Delta_A*Delta_W/2^t,
    the int8 kernel writes it there with multiplier 1 (nothing is rounded;
    int8 saturation and MAXIMUM / MINIMUM do the clip) and it is DEQUANTIZEd
    (exact) for the float32 op that follows; else a Dense layer runs as an
    int8 x int8 BATCH_MATMUL with int32 output plus an int32 bias, turned
    exactly into float32, and a conv layer is computed in float32 from its
    int8-stored operands (DEQUANTIZE is exact; the float32 sums are exact
    while below 2^24 units, checked from the weights).  Such a conv can
    instead run as an int8 kernel whose output is rounded to a coarser
    power-of-two step (``round_pooled_outputs=True``): faster, identical on
    every family, but a rounding the plan does not have (``exact_on`` is
    empty; the measured agreement shows its cost).  Add stays float32 (it
    does not commute with rounding, and TFLite's int8 ADD rescales with the
    kernel families' own rounding).
* B_W > 8 or B_A > 8: computed in float32 (int16 activations were not used).
  Weights above 8 bits are stored float32, pre-rounded to their grid (float32
  holds 16-bit codes exactly); inputs above 8 bits are rounded by builtin
  float ops (MUL 1/Delta, FLOOR, SUB, GREATER_EQUAL 1/2, CAST, ADD: exactly
  floor(v + 1/2); MAXIMUM / MINIMUM; MUL Delta).  Operands at <= 8 bits stay
  int8-stored and are DEQUANTIZEd.
* The network input is rounded by the same float ops and then QUANTIZEd
  (exact: the value is already on the grid).
* Average pooling, global average pooling (MEAN), Add and Concatenate run
  in float32 on exact values; a mean is rounded once by float32 (the plan's
  simulation uses float64), which can move a value lying within float32
  precision of a rounding tie of the next grid, equally on every family.

Rounding of the int8 requantization, and the kernel families.  The plan
rounds to nearest with ties upward: with N the accumulator in its integer
unit and 2^s the next grid's step in that unit (s >= 1), the code is
floor(N / 2^s + 1/2).  TFLite's kernel families round differently: XNNPACK
(the interpreter's default) once in float32 with ties to even, the reference
FULLY_CONNECTED once with ties away from zero, the reference CONV_2D /
DEPTHWISE_CONV_2D and the optimized builtin kernels twice (gemmlowp: a
rounding doubling high multiply, then a rounding right shift), which is off
by one step for values just below a tie.  The export avoids every tie by
construction, the same file for all families ("odd accumulator"):

* the weights are stored as 2*k more than the bias needs (t one larger) and
  the bias as 2*b + 1, so the kernel's accumulator is A = 2N + 1, always
  odd, while a tie would be an even multiple of 2^s: no family meets a tie;
* the internal tensor ``<layer>/acc_requant`` that the kernel writes has
  scale Delta*(1 + 2^-23), so the multiplier is 2^-(s+1)*(1 - 2^-23): in
  gemmlowp's form its mantissa is just below 1, so the first (doubling high
  multiply) rounding returns A itself while |A| * 2^-23 < 1/2, and the one
  remaining rounding has no tie to break; in float32 (XNNPACK) A and the
  scale are exact and the product lands at least 2^-(s+1) * (1 - 3|A| 2^-24)
  away from every tie.  So every family gives floor(N / 2^s + 1/2) while
  |A| < 2^22 (checked per layer from the weights: sum |k| * max |input code|
  + |bias|).  An int8 QUANTIZE then relabels the scale to exactly Delta
  without changing a code (its multiplier is 1 + 2^-23) and moves the
  zero point to the consumer's.

With 8-bit weights, 2*k does not fit int8; when the layer's input has at
most 7 bits its int8 tensor is stored as 2*code at scale Delta_A/2 instead
(every producer writes it so: the relabelling QUANTIZE above, or the
network input's QUANTIZE), which doubles the accumulator just the same.
When neither is possible (8-bit weights and an 8-bit input; or the
accumulator bound is 2^22 or more), the older device tunes the layer for
the family named by ``kernels``: the multiplier is nudged by 2^-23 up
(single-rounding kernels: ties go up) or down (double-rounding kernels:
their first rounding changes nothing), and on a signed grid the bias is
raised by K output steps (K = minus the lowest code; an int8 ADD of -K*Delta
takes them off) so every code that matters is rounded from a positive value.
Such a layer is exact on the families that share the nudge direction (for
'xnnpack': XNNPACK and the reference Dense kernel; for 'optimized': the
builtin kernels and the reference convolutions) and can land one step off,
still on its grid, on the others.

Where this is recorded: each layer's :attr:`LayerExport.exact_on`, the
report's :attr:`ExportReport.exact_on` (families on which every layer is
exact), and the file's metadata entry ``tfprec`` (JSON: ``exact_on`` and,
per layer, ``exact_on``, ``compute`` and ``output``).  The export's check
runs the written file and a probe of every layer's quantized input on all
three families (XNNPACK, BUILTIN_REF, builtin without delegates) on
``check_examples`` (default 2000) examples and reports the decision
agreement with the plan's numpy simulation (:func:`simulate_plan`) per
family, measured, not assumed.

Every file has one SignatureDef, ``serving_default``, whose input and output
carry the Keras model's input and output names, so
``Interpreter.get_signature_runner()`` runs it.
"""
from __future__ import annotations

import json
import os

import numpy as np

from tfprec._tf import tf
from tfprec.errors import ExportError
from tfprec.export.checks import (bmm_honors_zero_point, check_acts, check_weights,
                                  interpreter, run_probe)
from tfprec.export.formats import (RESOLVER_OF, TIE_DIRECTION, ExportInvalidDataError,
                                   ExportPlanError, as_export_errors, plan_formats)
from tfprec.export.lower import Realizer
from tfprec.export.report import ExportReport, LayerExport, write_checked
from tfprec.export.running import agreement, tflite_predict  # noqa: F401 (public here too)
from tfprec.inputs import as_inputs, choice, flag, nonnegative_int
from tfprec.quantization.simulate import _run as _simulate, checked_plan, simulate_logits
from tfprec.statistics.graph import WEIGHT_KINDS, parse_model

__all__ = ["ExportReport", "LayerExport", "export_tflite", "tflite_predict",
           "agreement", "simulate_plan"]

_CHECK_EXAMPLES = 2000
_CHUNK = 250          # examples per interpreter run and simulation in the check
_ROUNDING_NOTE = (
    "layers whose requantization cannot use the odd-accumulator construction "
    "(8-bit weights or a large accumulator) are tuned for {k} kernels "
    "(kernels='{k}'); TFLite's kernel families round ties differently "
    "(XNNPACK: single rounding, ties to even; reference FULLY_CONNECTED: "
    "single, ties away from zero; reference CONV_2D/DEPTHWISE and optimized "
    "builtins: gemmlowp double rounding), so such a layer can land one step "
    "off (still on its grid) on the other families: {layers}")


# --------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------
def _output_path(path) -> str:
    """``path`` as a str, refusing None, non-paths, empty names, directories
    and paths whose folder does not exist or is not writable (before
    anything is built)."""
    if path is None or not isinstance(path, (str, os.PathLike)):
        raise ExportError(f"path must be the output file name (str or os.PathLike), "
                          f"got {path!r}")
    path = os.fspath(path)
    if not isinstance(path, str) or not path:
        raise ExportError(f"path must be a non-empty file name, got {path!r}")
    folder = os.path.dirname(os.path.abspath(path))
    what = None
    if os.path.isdir(path) or path.endswith(("/", os.sep)):
        what = "is a directory"
    elif not os.path.isdir(folder):
        what = "is in a folder that does not exist"
    elif not os.access(folder, os.W_OK | os.X_OK):
        what = f"is in a folder that is not writable ({folder!r})"
    if what:
        raise ExportError(f"cannot write TFLite file path={path!r}: it {what}")
    return path


def _parse(model):
    with as_export_errors("cannot export: "):
        return parse_model(model)


def _plan(model, plan, allow_fingerprint_mismatch=False):
    """:func:`tfprec.quantization.simulate.checked_plan` (the check of
    :func:`tfprec.quantize_model`, same words), its errors also ExportErrors."""
    with as_export_errors():
        return checked_plan(model, plan,
                            allow_fingerprint_mismatch=allow_fingerprint_mismatch)


def _input_shape(graph) -> tuple:
    return tuple(graph.shapes[graph.input_id])


def _check_inputs(data, graph, fmts, n: int):
    """(inputs [n', ...] float32 with n' <= n, source) for the checks.

    ``data``: a numpy array or tensor [N, ...], a tf.data.Dataset (of inputs
    or (input, label) pairs, batched or not), an iterable of arrays or of
    ``[array]`` lists, or a callable returning one (as the TFLite converter
    takes); each is checked by :func:`tfprec.inputs.as_inputs`.  None: n
    synthetic inputs drawn uniformly over the first layer's input range.
    """
    shape = _input_shape(graph)
    if n == 0:
        return np.zeros((0, *shape), np.float32), "no"
    what = "representative_data"
    if data is None:
        first = [op for op in graph.ops if op.kind in WEIGHT_KINDS][0]
        fa = fmts[first.name][1]
        rng = np.random.default_rng(0)
        lo = -1.1 * fa.range if fa.signed else -0.1 * fa.range
        hi = 1.1 * fa.range if fa.signed else 2.1 * fa.range
        return rng.uniform(lo, hi, (n, *shape)).astype(np.float32), "synthetic"
    if callable(data) and not hasattr(data, "__iter__"):
        data = data()
    with as_export_errors():
        if isinstance(data, tf.data.Dataset) or hasattr(data, "shape"):
            return as_inputs(data, shape, what=what, max_examples=n,
                             allow_single=True), what
        if not hasattr(data, "__iter__") or isinstance(data, (str, bytes, dict)):
            raise ExportInvalidDataError(
                f"{what} must be an array [N, ...], a tf.data.Dataset or an "
                f"iterable of arrays, got {type(data).__name__}")
        got, count = [], 0
        for i, item in enumerate(data):
            if isinstance(item, (list, tuple)) and item and hasattr(item[0], "shape"):
                item = item[0]                  # the converter's [array] items
            got.append(as_inputs(item, shape, what=f"{what} item {i}",
                                 allow_single=True, allow_empty=True))
            count += len(got[-1])
            if count >= n:
                break
        if count == 0:
            raise ExportInvalidDataError(
                f"{what} is empty: at least one example is needed.")
    return np.concatenate(got)[:n], what


# --------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------
BACKENDS = ("auto", "exact", "ai_edge_quantizer")
# graph op kinds the exact writer (tfprec.export.lower) expresses
_EXACT_KINDS = {"dense", "conv2d", "depthwise", "act", "maxpool", "avgpool", "gap",
                "reshape", "identity", "add", "concat"}


def exact_can_express(model) -> bool:
    """Whether the exact writer expresses every op of ``model`` (ReLU-type
    activations, pools, reshapes, add, concat around Dense / Conv2D /
    DepthwiseConv2D); else ``backend='auto'`` picks ai_edge_quantizer."""
    graph = _parse(model)
    return all(op.kind in _EXACT_KINDS and (op.kind != "act" or op.attrs.get("fn") in
                                            ("relu", "linear", None))
               for op in graph.ops)


def export_tflite(model, plan, path, representative_data=None, *,
                  kernels: str = "xnnpack",
                  check_examples=None,
                  strict: bool = True,
                  allow_fingerprint_mismatch: bool = False,
                  round_pooled_outputs: bool = False,
                  backend: str = "auto", **aeq_options) -> ExportReport:
    """Writes a ``.tflite`` model that computes the plan's fixed-point network.

    ``backend``: 'exact' (this module's flatbuffer writer, below),
    'ai_edge_quantizer' (alias 'aeq': :func:`tfprec.export.aeq.export_aeq`,
    Google's AI Edge Quantizer over a TFLiteConverter float file; it takes
    ``check_examples`` and the extra keywords ``aeq_options``: labels,
    round_wide_weights, weight_types, baselines, latency, exact_ties,
    full_integer) or 'auto' (the
    default: 'exact' when :func:`exact_can_express` the model and the plan
    has one weight range per tensor, else 'ai_edge_quantizer'; plans with
    per-channel weight ranges are refused by 'exact').  ``kernels`` names the family whose rounding ties
    are tuned, for both backends.
    ``check_examples`` None: 2000 for both (all given examples when fewer).
    The ai_edge_quantizer backend returns an
    :class:`~tfprec.export.aeq_report.AeqExportReport` (an ExportReport).

    Args:
      model: a trained tf_keras classifier (read only, never modified).
      plan: a :class:`~tfprec.planning.plan.PrecisionPlan` for ``model``.
      path: output file (str or os.PathLike); written atomically (temp file +
        ``os.replace``, :func:`tfprec.fileio.atomic_write_bytes`).
      representative_data: inputs for the activation-grid check and the
        comparison with the plan's simulation: an array ``[N, ...]``, a
        ``tf.data.Dataset`` (inputs or (input, label) pairs), or an iterable
        of arrays / ``[array]`` lists or a callable returning one, as for the
        TFLite converter.  Without it, ``check_examples`` synthetic inputs
        drawn uniformly over the first layer's input range are used.
      kernels: the TFLite kernel family ('xnnpack': the default CPU path of
        the LiteRT interpreter, 'reference': ``BUILTIN_REF``, or 'optimized':
        builtin kernels without delegates) that the few requantizations which
        cannot be made exact on every family (8-bit weights, or a large
        accumulator; see the module docstring) are tuned for.  Every other
        layer is exact on all three families; the report's and the file
        metadata's ``exact_on`` say which families reproduce the plan.
      check_examples: how many examples (a non-negative int; None: 2000)
        the checks use: all of ``representative_data`` when it has fewer;
        0 checks the stored weights only (no activation or decision check).
        The written file and a probe of every layer's input are run on each
        kernel family on these examples.
      strict: (a bool) raise :class:`ExportError` (with ``.report``) and
        write nothing if any grid check fails.
      allow_fingerprint_mismatch: export a plan made from another model's
        weights (same layers and geometry) on purpose; see
        :meth:`~tfprec.planning.plan.PrecisionPlan.validate_for`.
      round_pooled_outputs: (a bool, default False) trade exactness for
        speed: a <= 8-bit layer whose output feeds average pooling, Add,
        Concatenate or the logits and does not fit int8 exactly (it would be
        computed in float32) instead runs as an int8 kernel whose output is
        rounded (ties upward, identically on every kernel family) to the
        finest power-of-two step whose 256 codes cover its clipped range
        (+- its accumulator bound when unclipped).  That rounding is not in
        the plan: such layers have an empty ``exact_on``, a note naming the
        step, and the measured agreement shows its effect.

    Returns:
      An :class:`ExportReport`.

    Raises:
      ExportError: every error is one, checked in this order before anything
        is built: ``path`` (None, not a str / PathLike, a directory, a
        folder that does not exist or is not writable); ``kernels``,
        ``check_examples`` (not a non-negative int), ``strict`` and
        ``round_pooled_outputs`` (not a bool), each also an InvalidDataError; the plan, checked exactly as by
        :func:`tfprec.quantize_model` and in the same words (not a plan,
        does not match the model's layers or widths, made for other
        weights, bits not an int in 2..16, ranges not powers of two: also a
        PlanError naming the layer); the model (also an UnsupportedModelError);
        ``representative_data`` (empty, mis-shaped, non-numeric or
        non-finite: also an InvalidDataError naming it).  Afterwards: a
        layer cannot be represented (message names it), a grid check fails
        (``strict``), or the file cannot be written (message names the
        path; no partial file is left).
    """
    path = _output_path(path)
    with as_export_errors():
        backend = choice("backend", "ai_edge_quantizer" if backend == "aeq" else backend,
                         BACKENDS)
    per_channel = [getattr(l, "name", "?") for l in getattr(plan, "layers", None) or ()
                   if getattr(l, "weight_channel_ranges", None) is not None]
    if backend == "auto":
        backend = ("exact" if exact_can_express(model) and not per_channel
                   else "ai_edge_quantizer")
    if backend == "exact" and per_channel:
        raise ExportPlanError(
            f"layers {per_channel[:3]}{' ...' if len(per_channel) > 3 else ''} have "
            "per-channel weight ranges (weight_channel_ranges); the exact writer "
            "stores one weight scale per tensor: use backend='ai_edge_quantizer' "
            "(what backend='auto' picks for such plans)")
    if backend == "ai_edge_quantizer":
        from tfprec.export.aeq import export_aeq
        return export_aeq(model, plan, path, representative_data,
                          check_examples=2000 if check_examples is None else check_examples,
                          strict=strict, kernels=kernels,
                          allow_fingerprint_mismatch=allow_fingerprint_mismatch,
                          **aeq_options)
    if aeq_options:
        raise ExportError(f"options {sorted(aeq_options)} are for "
                          "backend='ai_edge_quantizer' only")
    if check_examples is None:
        check_examples = _CHECK_EXAMPLES
    with as_export_errors():
        kernels = choice("kernels", kernels, tuple(TIE_DIRECTION))
        n = nonnegative_int("check_examples", check_examples)
        strict = flag("strict", strict)
        round_pooled_outputs = flag("round_pooled_outputs", round_pooled_outputs)
    plan = _plan(model, plan, allow_fingerprint_mismatch)
    graph = _parse(model)
    fmts = plan_formats(graph, plan)
    plan_by_name = {lp.name: lp for lp in plan.layers}
    xs, source = _check_inputs(representative_data, graph, fmts, n)

    real = Realizer(graph, fmts, bmm_honors_zero_point(), kernels,
                    io_names=_io_names(model),
                    round_pooled_outputs=round_pooled_outputs)
    real.build(plan_by_name)
    exact_on = tuple(f for f in RESOLVER_OF
                     if all(f in real.layers[op.name].exact_on for op in graph.weight_ops))
    content = real.file({"tfprec": _metadata(graph, real, exact_on, kernels)})
    probe = real.probe

    # ---- read everything back through the interpreter
    try:
        # weights and quantization parameters, as stored
        it = interpreter(content, "ref")
        it.allocate_tensors()
        details = {d["index"]: d for d in it.get_tensor_details()}
        out_index = it.get_output_details()[0]["index"]
    except Exception as e:
        raise ExportError(f"the exported model does not run in the LiteRT "
                          f"interpreter: {e}") from e
    layers = []
    for op in graph.weight_ops:
        rep = real.layers[op.name]
        fw, fa = fmts[op.name]
        rep.weights_grid_ok = check_weights(it, details, rep, real.tensors[op.name],
                                            op, fw, fa)
        rep.act_grid_ok = True
        layers.append(rep)
    # every layer's quantized input, computed by each kernel family (the
    # probe model lists them as outputs: delegates keep no intermediates),
    # and the logits of the very file that is written, on each family; in
    # chunks of examples, against the plan's simulation of the same chunk
    files = {fam: [] for fam in RESOLVER_OF} if len(xs) else {}
    sims, counts = [], {}
    for start in range(0, len(xs), _CHUNK):
        xc = xs[start:start + _CHUNK]
        try:
            runs = {fam: run_probe(probe, resolver, xc)
                    for fam, resolver in RESOLVER_OF.items()}
            for fam, resolver in RESOLVER_OF.items():
                files[fam].append(run_probe(content, resolver, xc)[out_index])
        except Exception as e:
            raise ExportError(f"the exported model does not run in the LiteRT "
                              f"interpreter: {e}") from e
        values: dict = {}
        sims.append(_simulate(graph, plan, xc, values))
        for op, rep in zip(graph.weight_ops, layers):
            fa = fmts[op.name][1]
            codes = np.floor(values[op.name] / fa.step + 0.5).astype(np.int64)
            for fam, outs in runs.items():
                ok, match = check_acts(outs, details, rep, real.tensors[op.name], fa,
                                       codes)
                rep.act_grid_ok = bool(rep.act_grid_ok and ok)
                c = counts.setdefault((fam, op.name), [0.0, 0])
                c[0] += match * codes.size
                c[1] += codes.size
    for op, rep in zip(graph.weight_ops, layers):
        c = counts.get((kernels, op.name))
        if c:
            rep.act_codes_match = c[0] / max(1, c[1])
    sim = np.concatenate(sims) if sims else None
    files = {fam: np.concatenate(v) for fam, v in files.items()}

    tuned = [op.name for op in graph.weight_ops
             if set(real.layers[op.name].exact_on) != set(RESOLVER_OF)]
    report = ExportReport(
        path=path, layers=layers, file_size_bytes=len(content),
        plan_bits=_plan_bits(graph, plan_by_name, real.layers),
        check_examples=int(xs.shape[0]), check_source=source, kernels=kernels,
        sim_agreement=float("nan"), max_logit_diff=float("nan"), exact_on=exact_on,
        notes=[_ROUNDING_NOTE.format(k=kernels, layers=tuned)] if tuned else [])
    if files:
        dec = np.argmax(sim, axis=-1)
        report.agreement_by_kernels = {
            fam: float(np.mean(dec == np.argmax(out, axis=-1)))
            for fam, out in files.items()}
        report.max_logit_diff_by_kernels = {
            fam: float(np.max(np.abs(out.astype(np.float64) - sim)))
            for fam, out in files.items()}
        report.act_codes_match_by_kernels = {
            fam: float(sum(c[0] for (f, _), c in counts.items() if f == fam)
                       / max(1, sum(c[1] for (f, _), c in counts.items() if f == fam)))
            for fam in RESOLVER_OF}
        report.sim_agreement = report.agreement_by_kernels[kernels]
        report.max_logit_diff = report.max_logit_diff_by_kernels[kernels]
    else:
        report.notes.append("check_examples=0: only the stored weights were "
                            "checked (no activation grid or decision check)")
    return write_checked(path, content, report, layers, strict)


def _io_names(model) -> tuple:
    """(input name, output name) of the serving signature: the Keras model's
    input and output names where it has them, else 'input' / 'logits'."""
    def first(attr, default):
        names = getattr(model, attr, None)
        try:
            name = names[0] if names else None
        except (TypeError, IndexError, KeyError):
            name = None
        return name if isinstance(name, str) and name else default
    i, o = first("input_names", "input"), first("output_names", "logits")
    return (i, o if o != i else f"{o}_output")


def _metadata(graph, real, exact_on, kernels) -> bytes:
    """The file's ``tfprec`` metadata entry (JSON bytes): the kernel
    families on which the whole file, and each weight layer, is exact by
    construction, and how each layer is computed."""
    doc = {"format": "tfprec fixed-point export", "kernels": kernels,
           "exact_on": list(exact_on),
           "layers": {op.name: {"exact_on": list(real.layers[op.name].exact_on),
                                "compute": real.layers[op.name].compute,
                                "output": real.layers[op.name].output}
                      for op in graph.weight_ops}}
    return json.dumps(doc, sort_keys=True).encode("utf-8")


def _plan_bits(graph, plan_by_name, reps) -> float:
    """The plan's representational cost in bits (METHOD.md section 4), from
    the plan's own counts where it has them (a mismatch is noted)."""
    bits = 0
    for op in graph.weight_ops:
        lp = plan_by_name[op.name]
        rep = reps[op.name]
        nw = getattr(lp, "num_weights", None) or rep.num_weights
        ni = getattr(lp, "num_inputs", None) or rep.num_inputs
        if (nw, ni) != (rep.num_weights, rep.num_inputs):
            rep.notes.append(f"the plan counts {nw} weights and {ni} inputs; the "
                             f"model has {rep.num_weights} and {rep.num_inputs}")
        bits += int(lp.weight_bits) * int(nw) + int(lp.act_bits) * int(ni)
    return float(bits)


# --------------------------------------------------------------------------
# Fixed-point simulation of a plan (float64)
# --------------------------------------------------------------------------
def simulate_plan(model, plan, x, *, allow_fingerprint_mismatch: bool = False) -> np.ndarray:
    """Logits of the plan's fixed-point network (float64 reference).

    Every weight layer's input is rounded with :func:`tfprec.fixedpoint.quantize`
    to its planned format and its folded kernel and bias to theirs; everything
    else is float64.  ``x``: inputs [N, ...] (or one example without the
    batch axis), checked by :func:`tfprec.inputs.as_inputs` (an ExportError
    that is also an InvalidDataError naming ``x`` when empty, mis-shaped or
    non-finite).  ``plan`` is checked as by :func:`export_tflite`.
    """
    plan = _plan(model, plan, allow_fingerprint_mismatch)
    graph = _parse(model)
    with as_export_errors():
        x = as_inputs(x, _input_shape(graph), what="x", allow_single=True)
    return simulate_logits(model, plan, x, graph=graph,
                           allow_fingerprint_mismatch=allow_fingerprint_mismatch)
