"""TFLite export of a precision plan with Google's AI Edge Quantizer.

:func:`export_aeq` (``export_tflite(..., backend="ai_edge_quantizer")``)
writes a LiteRT file with ``tf.lite.TFLiteConverter`` (float) and
``ai_edge_quantizer`` 0.10 (recipe API), and runs it with
``ai_edge_litert.interpreter.Interpreter`` under every kernel family.

Formats, per weight layer of the plan (METHOD.md section 1):

* weights: B_W <= 4 bits -> packed INT4, 5..8 -> INT8 (per-channel
  quantization, every channel's scale exactly the plan's Delta_W =
  R_W 2^(1-B_W), zero point 0: the (BatchNorm-folded) kernel and bias are
  snapped to the plan's grid first and AEQ's min/max algorithm is given the
  statistics (:func:`tfprec.export.aeq_recipe.weight_qsv`) that make its
  scale Delta_W, so it stores the plan's codes).  DEPTHWISE_CONV_2D has no
  INT4 kernel: INT8, same grid.  B_W > 8: float32 values on the grid
  (float compute), or, with ``round_wide_weights=True``, rounded to 8 bits.
  LiteRT int8 weights are narrow-range [-127, 127]: an 8-bit kernel with
  the code -128 is stored as float32 on its grid (a substitution), or
  refused when ``weight_types`` asks for int8.
* compute: a Dense / Conv2D / DepthwiseConv2D op (matched to the file's
  operator by its kernel, :func:`tfprec.export.aeq_recipe.match_ops`) runs
  on an integer kernel when its output, through ReLUs, clips, max-pool and
  reshapes only, reaches exactly one planned *unsigned* input grid
  (:func:`~tfprec.export.aeq_recipe.closed_consumers`): it is requantized
  straight onto that grid (clips, ReLUs, max-pool and reshapes commute with
  rounding).  Activations are int8 when every such input needs <= 8 bits,
  else int16 for all (16x8 / 16x4 kernels), with scale Delta_A (int8: zero
  point 0 for signed formats, -128 for unsigned; int16: zero point 0).
  Every other op computes in float32 on exact values: a weight op whose
  output meets an Add, a pooling, a concatenation, several grids or the
  logits is weight-only (its integer weights dequantized); ops the plan
  does not round (Add, Multiply, pooling, activations) are float; a weight
  op whose input does not come from an integer producer gets the plan's
  rounding explicitly (:class:`~tfprec.export.aeq_recipe.PlanRound`).  So
  nothing the plan does not round is rounded.  Signed input grids are never
  fed by integer kernels (LiteRT rounds negative requantization ties away
  from zero, the plan upward), nor are 16-bit unsigned ones (no LiteRT
  integer type): float32 on the explicit grid, listed as substitutions.
  Standalone BN (affine), generic weight layers and an Embedding's table
  are float32 operators with their weights on the grid.
* the logits layer is weight-only (its integer weights are dequantized and
  it computes in float32 on its exact input grid), so the logits are not
  rounded to 8 bits.

Requantization ties: the integer kernels round ties differently per family
(XNNPACK to even, gemmlowp-style kernels twice).  Where a weight layer's
output reaches the next layer through the plan's clip (a float MINIMUM that
requantizes exactly onto Delta_A), its output scale is Delta_A*(1 -+ eps),
which makes the family named by ``kernels`` round positive ties upward as
the plan does (:data:`tfprec.export.aeq_recipe.TIE_DIRECTION`, measured by
``benchmarks/deploy.py --verify``).

Modes: ``exact_ties=False`` drops the float clips where the int8
saturation is the plan's, and the model's own redundant caps
(:func:`~tfprec.export.aeq_rewrite.drop_redundant_caps`); the ties are then
tuned through the next integer layer's weight scale (output scale
Delta_A*(1-eps), weight scale Delta_W*(1+eps)).  ``full_integer=True``
runs every operator AI Edge Quantizer quantizes on integer kernels (Add,
pooling and the layers feeding them too), with calibrated int8 scales
where the plan does not round: faster, not exact by construction.

The result is checked as written: every weight tensor dequantized equals
the snapped weights exactly with scale Delta_W, every planned activation
tensor has scale Delta_A, and the decisions are compared with the fake-quant
model (:func:`tfprec.quantize_model`) under each kernel family (XNNPACK,
the optimized builtin kernels, the BUILTIN_REF reference kernels).  The
kernel families round requantization ties differently (see
:mod:`tfprec.export.tflite`), so agreement can be below 100 %.
"""
from __future__ import annotations

import os

import numpy as np

from tfprec._tf import tf
from tfprec.errors import ExportError
from tfprec.fixedpoint import channel_view
from tfprec.export import aeq_recipe as R
from tfprec.export.aeq_rewrite import drop_redundant_caps, float_only_tensors
from tfprec.export.aeq_report import (METADATA_NAME, AeqExportReport, AeqLayer,  # noqa: F401
                                      read_metadata, with_metadata)
from tfprec.export.formats import ExportInvalidDataError, as_export_errors, layer_formats
from tfprec.export import runtime
from tfprec.export.report import write_checked
from tfprec.inputs import as_inputs, choice, flag, nonnegative_int
from tfprec.quantization.simulate import checked_plan
from tfprec.statistics.graph import parse_model

CALIBRATION_EXAMPLES = 64


# --------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------
def _output_path(path) -> str:
    """``path`` as a str; ExportError for None, non-paths, directories and
    folders that do not exist or are not writable (before anything is
    built)."""
    if path is None or not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise ExportError(f"path must be the output file name (str or os.PathLike), "
                          f"got {path!r}")
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path) or path.endswith(("/", os.sep)):
        raise ExportError(f"cannot write TFLite file path={path!r}: it is a directory")
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK | os.X_OK):
        raise ExportError(f"cannot write TFLite file path={path!r}: its folder "
                          f"{folder!r} does not exist or is not writable")
    return path


def _inputs(data, model, graph, fmts: dict, n: int) -> tuple:
    """(inputs [n' <= n, ...], source): ``representative_data`` (an array
    or tensor, a tf.data.Dataset of inputs or (input, label) pairs, an
    iterable of arrays or of ``[array]`` lists, or a callable returning
    one; for a several-input model, its inputs as a list / dict / Dataset,
    packed by :mod:`tfprec.packing`), checked by
    :func:`tfprec.inputs.as_inputs`; None: ``n`` inputs drawn uniformly over
    the first layer's input range ('synthetic')."""
    from tfprec import packing
    from tfprec.inputs import model_input_shape
    multi = packing.is_multi_input(model)
    shape = tuple(model_input_shape(model)) if not multi else model_input_shape(model)
    if data is None:
        fa = fmts[graph.weight_ops[0].name][1]
        if multi or fa is None:
            raise ExportError("representative_data is needed for this model (several "
                              "inputs, or integer ids first): no synthetic inputs are made")
        lo, hi = (-1.1 * fa.range, 1.1 * fa.range) if fa.signed else (-0.1 * fa.range,
                                                                      2.1 * fa.range)
        x = np.random.default_rng(0).uniform(lo, hi, (n, *shape))
        return x.astype(np.float32), "synthetic"
    if callable(data) and not hasattr(data, "__iter__"):
        data = data()
    what = "representative_data"
    with as_export_errors():
        if multi or isinstance(data, tf.data.Dataset) or hasattr(data, "shape"):
            return as_inputs(data, shape, what=what, max_examples=n,
                             allow_single=True), what
        if not hasattr(data, "__iter__") or isinstance(data, (str, bytes, dict)):
            raise ExportInvalidDataError(f"{what} must be an array [N, ...], a "
                                         "tf.data.Dataset or an iterable of arrays, "
                                         f"got {type(data).__name__}")
        got, count = [], 0
        for i, item in enumerate(data):
            if isinstance(item, (list, tuple)) and item and hasattr(item[0], "shape"):
                item = item[0]
            got.append(as_inputs(item, shape, what=f"{what} item {i}", allow_single=True,
                                 allow_empty=True))
            count += len(got[-1])
            if count >= n:
                break
        if not count:
            raise ExportInvalidDataError(f"{what} is empty: at least one example is needed.")
    return np.concatenate(got)[:n], what


# --------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------

def _convert(gm) -> bytes:
    try:
        return runtime.float_tflite(gm)
    except Exception as e:
        raise ExportError(f"TFLiteConverter cannot convert the model: {e}") from e


def _quiet():
    """Context manager hiding AI Edge Quantizer's progress bars (tqdm on
    stderr); errors still propagate."""
    import contextlib
    import io
    return contextlib.redirect_stderr(io.StringIO())

def export_aeq(model, plan, path, representative_data=None, *, labels=None,
               check_examples: int = 2000, round_wide_weights: bool = False,
               weight_types=None, baselines: bool = False, latency: bool = False,
               kernels: str = "xnnpack", exact_ties: bool = True,
               full_integer: bool = False, strict: bool = True,
               allow_fingerprint_mismatch: bool = False,
               _directions=None, _unverified: bool = False) -> AeqExportReport:
    """Writes the plan's network as an ai_edge_quantizer LiteRT file.

    Args:
      model, plan, path, representative_data, allow_fingerprint_mismatch:
        as for :func:`tfprec.export.tflite.export_tflite` (the inputs also
        calibrate tensors the plan does not fix).
      labels: integer labels of the first examples of
        ``representative_data`` (optional); accuracy (a fraction) is then
        reported per kernel family.
      check_examples: how many examples (non-negative int) the decision
        checks run on under each kernel family (default 2000).
      round_wide_weights: store weights planned above 8 bits as int8
        (rounded to 8 bits, off the plan) instead of float32 on their grid.
      weight_types: optional {layer name: 'int2' | 'int4' | 'int8' |
        'int4_block32' | 'float'} overriding the storage type; combinations
        not in :data:`tfprec.export.aeq_recipe.VERIFIED` are refused.
      baselines: also build TF's float and full-integer int8 PTQ files of
        the model and report their size, op types, accuracy and latency.
      latency: measure the median single-example latency (seconds).
      kernels: the kernel family ('xnnpack', 'optimized', 'reference')
        whose requantization is made to round ties upward like the plan
        (:data:`tfprec.export.aeq_recipe.TIE_DIRECTION`); the others can
        land one step off on ties (the report gives every family).
      exact_ties: keep the plan's clip (a float MINIMUM, where the previous
        layer's output is requantized exactly onto Delta_A) in front of
        every layer fed by a weight layer, even when the int8 saturation
        already is the plan's, so that ties are tuned with every scale
        exactly the plan's; False drops it in front of integer layers
        (fewer operators: the ties are tuned through the layer's weight
        scale, Delta_W*(1+-eps) against an input scale Delta_A*(1-+eps)),
        and the model's own caps its grid saturates below.
      full_integer: run every operator LiteRT has an int8 (int16) kernel
        for on integer kernels, as TF's full-integer post-training
        quantization does, for speed: weights keep the plan's codes and
        every planned input is requantized by its producer (a weight op, an
        Add, a pooling...) straight onto the plan's step Delta_A; tensors
        the plan does not round (the inputs of an Add, a residual stream)
        get min/max-calibrated int8 scales, which adds rounding the plan
        does not have.  Ties are tuned for ``kernels`` where a weight op's
        output is requantized onto the next weight op's grid (output scale
        Delta_A*(1 -+ eps), the next layer's weight scale Delta_W*(1 +- eps),
        the product exact to 2^-24); a grid of fewer than 8 bits keeps the
        plan's clip (a float MINIMUM: AI Edge Quantizer has no integer one)
        for the plan's saturation.  Decisions are then not the fake-quant
        model's by construction: the report gives the measured agreement
        and accuracy per kernel family.  Overrides ``exact_ties``.
      strict: raise ExportError (with ``.report``) and write nothing when a
        stored grid differs from the plan.

    Returns:
      An :class:`~tfprec.export.aeq_report.AeqExportReport`.

    Raises:
      ExportError: bad arguments (also InvalidDataError / PlanError /
        UnsupportedModelError, as for ``export_tflite``); an unverified
        kernel combination or an activation format no integer type holds
        (message names the layer); the quantizer or the interpreter fails;
        a grid check fails (``strict``); the file cannot be written.
    """
    path = _output_path(path)
    with as_export_errors():
        n_check = nonnegative_int("check_examples", check_examples)
        wide_to_8 = flag("round_wide_weights", round_wide_weights)
        strict = flag("strict", strict)
        baselines = flag("baselines", baselines)
        latency = flag("latency", latency)
        exact_ties = flag("exact_ties", exact_ties)
        full_integer = flag("full_integer", full_integer)
        kernels = choice("kernels", kernels, R.FAMILIES)
    with as_export_errors():
        plan = checked_plan(model, plan, allow_fingerprint_mismatch=allow_fingerprint_mismatch)
    with as_export_errors("cannot export: "):
        graph = parse_model(model)
    weight_types = dict(weight_types or {})
    names = [op.name for op in graph.weight_ops]
    for k, v in weight_types.items():
        if k not in names or v not in R.WEIGHT_TYPES:
            raise ExportError(f"weight_types[{k!r}]={v!r}: the layer must be one of "
                              f"{names} and the type one of {sorted(R.WEIGHT_TYPES)}")
    fmts = {op.name: layer_formats(plan.layer(op.name)) for op in graph.weight_ops}
    n_avail = max(n_check, CALIBRATION_EXAMPLES)
    xs, source = _inputs(representative_data, model, graph, fmts, n_avail)
    from tfprec import packing
    in_names = list(model.input_names)
    in_dt = model.inputs[0].dtype
    feed = ((lambda a: packing.unpack(model, a)) if packing.is_multi_input(model)
            else (lambda a: a.astype(in_dt.as_numpy_dtype)) if in_dt.is_integer
            else (lambda a: a))     # an integer input (uint8 images, ids) in its type
    ys = None
    if labels is not None:
        ys = np.asarray(labels).reshape(-1)[:len(xs)].astype(np.int64)
        if len(ys) != min(len(xs), len(np.asarray(labels).reshape(-1))) or len(ys) == 0:
            raise ExportError("labels must be integer labels of the examples of "
                              "representative_data")

    # ---- per-layer formats
    kinds = {op.name: op.kind for op in graph.weight_ops}
    last = graph.weight_ops[-1].name
    layers = []
    for name in names:
        fw, fa = fmts[name]
        wt, note = R.weight_type(kinds[name], fw.bits, wide_to_8, weight_types.get(name))
        layers.append(AeqLayer(name=name, kind=kinds[name], weight_bits=fw.bits,
                               act_bits=None if fa is None else fa.bits,
                               act_signed=fa is not None and fa.signed,
                               weight_step=fw.step,
                               act_step=float("nan") if fa is None else fa.step,
                               weight_type=wt, notes=[note] if note else []))
        if fw.channels is not None:
            layers[-1].notes.append(
                f"weights per output channel: R_c from {min(fw.channels):g} to "
                f"{max(fw.channels):g} (weight_step is the largest channel's)")
    by = {l.name: l for l in layers}

    # ---- pass 1: a clip in front of every weight op, to find the chains
    # that can run on integer kernels
    gm, snapped = R.grid_model(model, fmts, wide_to_8)
    g1 = R.read_graph(_convert(gm))
    pairs = [(n, kinds[n]) for n in names]
    op1 = R.match_ops(g1, pairs, snapped)
    wstep = {n: fmts[n][0].steps(8 if (wide_to_8 and fmts[n][0].bits > 8) else None)
             for n in names}          # Delta_W, or per channel

    def min_code(name: str, kernels: dict) -> float:
        k = kernels[name][0]
        return float(np.min(k / (wstep[name] if np.ndim(wstep[name]) == 0
                                 else channel_view(wstep[name], k.shape))))

    for l in layers:
        if l.name not in op1 and l.weight_type != "float":
            l.weight_type = "float"
            l.notes.append(f"{l.kind} operator: no integer kernel of this backend; "
                           "weights float32 on their grid, float32 compute")
        elif l.weight_type == "int8" and l.name not in weight_types \
                and min_code(l.name, snapped) < -127:     # the plan's values, exactly
            l.weight_type = "float"
            l.notes.append("its 8-bit kernel has the code -128, which LiteRT's narrow-range "
                           "int8 weights lack: weights float32 on their grid, float32 compute")
    cands = [n for n in op1 if by[n].weight_type != "float" and n != last]
    act = "int16" if any(fmts[n][1].bits > 8 and (fmts[n][1].signed or fmts[n][1].bits < 16)
                         for n in cands) else "int8"

    def fits(fa) -> bool:
        return fa.bits <= 8 or (act == "int16" and (fa.signed or fa.bits < 16))

    name_of = {op.index: n for n, op in op1.items()}
    integer, why = set(), {}
    for n in (() if full_integer else cands):
        if not fits(fmts[n][1]):
            why[n] = (f"its {fmts[n][1].bits}-bit unsigned input fits no LiteRT integer "
                      "type (int16 has 15 bits of magnitude): float32 compute on its "
                      "grid (explicit rounding), integer weights dequantized")
            continue
        cons = R.closed_consumers(g1, op1[n].outputs[0], name_of)
        cf = {(fmts[name_of[c.index]][1].step, fmts[name_of[c.index]][1].lo,
               fmts[name_of[c.index]][1].hi) for c in cons or ()}
        if not cons or len(cf) != 1 or not fits(fmts[name_of[cons[0].index]][1]):
            why[n] = ("its output is not requantized onto one planned grid (it feeds "
                      "an operator the plan does not round: add, pooling, concatenation, "
                      "several formats...): float32 compute on its exact grid input, "
                      "integer weights dequantized (weight-only)")
            continue
        if fmts[name_of[cons[0].index]][1].signed:
            # LiteRT requantization rounds ties of negative values away from
            # zero (the plan: upward), and no scale nudge fixes both signs
            why[n] = ("its output feeds a signed input grid, where LiteRT's integer "
                      "requantization would round negative ties away from zero (the plan "
                      "rounds them up): float32 compute, integer weights dequantized "
                      "(weight-only), the next input rounded explicitly")
            continue
        integer.add(n)
    clip = {}
    if full_integer:        # every input requantized onto its grid by its producer
        integer = {n for n in cands if fits(fmts[n][1])}
        why = {n: ("its 16-bit unsigned input fits no LiteRT integer type: float32 "
                   "compute on its grid (explicit rounding), integer weights "
                   "dequantized") for n in cands if n not in integer}
        # no clip where the int8 saturation is the plan's (8-bit grids); a
        # narrower grid keeps its float clip (the plan's saturation)
        clip = {n: (None if act == "int8" and fmts[n][1].bits == 8 else True)
                for n in op1 if fmts[n][1] is not None and fits(fmts[n][1])}
    for n in (() if full_integer else op1):
        _, src = R.chain_tensors(g1, op1[n])
        if src is not None and name_of.get(src.index) in integer:
            fa = fmts[n][1]
            # no float clip where the int8 saturation is the plan's and the
            # consumer is integer: its weight scale then tunes the ties
            drop = not exact_ties and act == "int8" and fa.bits == 8 and n in integer
            clip[n] = None if drop else True
    for l in layers:
        l.act_type = act if l.name in integer else "float"
        if l.name in why:
            l.notes.append(why[l.name])
        if l.name not in clip and l.name != names[0] and fmts[l.name][1] is not None:
            l.notes.append("input rounded to its grid in float32 (explicit floor(x/Delta "
                           "+ 1/2)), as the fake-quant model does")
        if act == "int16" and l.act_bits <= 8 and l.name in integer:
            l.notes.append(f"{l.act_bits}-bit input carried in int16 (the network "
                           "uses one activation width, int16, for exact requantization)")
        l.families = (sorted(R.FAMILIES) if (_unverified or l.name not in op1) else
                      sorted(R.check_verified(l.name, l.kind, l.act_type, l.weight_type)))

    # ---- pass 2: the float file that is quantized
    gm, snapped = R.grid_model(model, fmts, wide_to_8, clip)
    float_content = _convert(gm)
    g = R.read_graph(float_content)
    op_of = R.match_ops(g, pairs, snapped)
    # layers whose input ties can be tuned through their weight scale (no
    # float clip in front): integer weights, on an integer kernel unless
    # the whole file is integer
    tunable = {l.name for l in layers if l.weight_type != "float"
               and (full_integer or l.act_type != "float")}
    if not exact_ties or full_integer:    # the model's own caps the grid already has
        float_content, n_caps = drop_redundant_caps(float_content, op_of, fmts, clip,
                                                    tunable)
        if n_caps:
            g = R.read_graph(float_content)
            op_of = R.match_ops(g, pairs, snapped)
    if set(op_of) != set(op1):
        raise ExportError(f"the converter wrote the weight operators of "
                          f"{sorted(set(op1) ^ set(op_of))} differently once the plan's "
                          "rounding was added")
    for l in layers:     # (an int8 kernel with code -128 here: weight_types asked for it)
        if l.weight_type == "int8" and min_code(l.name, snapped) < -127:
            raise ExportError(
                f"layer {l.name!r}: its 8-bit kernel has code -128; LiteRT int8 "
                "weights are narrow-range [-127, 127]. Use backend='exact'"
                + (" with per-tensor weight ranges." if np.ndim(wstep[l.name]) else "."))

    # ---- recipe: everything float but the integer chains and the weights
    from ai_edge_quantizer import quantizer
    key = R.ALGORITHM_KEY
    qt = quantizer.Quantizer(bytearray(float_content))
    if full_integer:        # every op AEQ can (its policy), but the explicit roundings
        qt.update_quantization_recipe(regex=".*", operation_name="*",
                                      op_config=R.op_config(act, "int8"), algorithm_key=key)
        for t in float_only_tensors(g, op_of, [l.name for l in layers
                                                 if l.weight_type == "float"]):
            qt.update_quantization_recipe(regex=R.anchored(g.tensor_name(t)),
                                          operation_name="*", algorithm_key="no_quantize")
    else:
        qt.update_quantization_recipe(regex=".*", operation_name="*",
                                      algorithm_key="no_quantize")
    chains = {}
    for n in op_of:
        chain, src = R.chain_tensors(g, op_of[n], R.SAME_SCALE if full_integer
                                     else R.TRANSPARENT)
        chains[n] = (chain, src)
        if n in clip and not full_integer:   # fed by an integer chain: its ops are integer
            default = R.op_config(act, "int8")
            for t in chain:
                p = g.producer(t)
                if p is not None and p.name not in R.WEIGHT_OPS:
                    qt.update_quantization_recipe(regex=R.anchored(g.tensor_name(t)),
                                                  operation_name="*", op_config=default,
                                                  algorithm_key=key)
    for l in layers:
        if l.name not in op_of:
            continue
        cfg = R.op_config(l.act_type, l.weight_type)
        if cfg is not None:
            op = op_of[l.name]
            qt.update_quantization_recipe(regex=R.anchored(g.tensor_name(op.outputs[0])),
                                          operation_name=op.name, op_config=cfg,
                                          algorithm_key=key)
    for io in ("INPUT", "OUTPUT"):        # float input and logits
        qt.update_quantization_recipe(regex=".*", operation_name=io,
                                      algorithm_key="no_quantize")
    # ---- calibration, then the plan's activation grids
    ncal = min(len(xs), CALIBRATION_EXAMPLES)
    parts = feed(xs[:ncal])
    parts = parts if isinstance(parts, list) else [parts]
    try:
        with _quiet():          # AEQ's tqdm progress bars go to stderr
            cal = qt.calibrate({"serving_default": [
                {n: p[i:i + 1] for n, p in zip(in_names, parts)} for i in range(ncal)]})
    except Exception as e:
        raise ExportError(f"ai_edge_quantizer calibration failed: {e}") from e
    planned, tensor_eps = {}, {}
    index_name = {op.index: m for m, op in op_of.items()}
    for n, (chain, src) in chains.items():
        l, fa = by[n], fmts[n][1]
        if n not in clip:
            if n in integer:        # QUANTIZE of the explicitly rounded input
                planned[g.tensor_name(chain[0])] = (n, fa)
                lo, hi = R.span(fa, act)
                cal[g.tensor_name(chain[0])] = {"min": np.array([[lo]], np.float32),
                                                "max": np.array([[hi]], np.float32)}
            continue
        lo, hi = R.span(fa, act)
        prev = None if src is None else index_name.get(src.index)
        pl = by.get(prev)
        direction = 0
        if pl is not None and pl.act_type != "float" and pl.weight_type != "float":
            direction = (_directions or {}).get(prev, R.tie_direction(
                pl.kind, pl.act_type, pl.weight_type, kernels))
        nudge = R.nudge(g, chain, src, fmts, op_of, direction)   # before a float clip
        compensated = not nudge and direction != 0 and clip[n] is None and n in tunable
        if compensated:         # no clip: the consumer's weight scale takes it back
            nudge = dict.fromkeys(chain, R.nudge_eps(fmts, prev, n, direction))
        for t in chain:
            nm = g.tensor_name(t)
            if nm in planned and planned[nm][1].step <= fa.step:
                continue            # full_integer: one tensor, two grids: the finer
            planned[nm] = (n, fa)
            tensor_eps[nm] = nudge.get(t, 0.0) if compensated else 0.0
            f = 1.0 - nudge.get(t, 0.0)
            cal[nm] = {"min": np.array([[lo * f]], np.float32),
                       "max": np.array([[hi * f]], np.float32)}
        if nudge:
            e = next(iter(nudge.values()))
            l.notes.append(
                "input requantized by the previous layer with scale Delta_A*(1%s2^-%d), "
                "%s, so that ties round upward as in the plan on %s kernels"
                % ("-" if e > 0 else "+", round(-np.log2(abs(e))),
                   "its weights on Delta_W*(1%s2^-%d) (their product with the input "
                   "scale is Delta_A*Delta_W to 2^-24)"
                   % ("+" if e > 0 else "-", round(-np.log2(abs(e))))
                   if compensated else "then exactly onto Delta_A by the float clip",
                   kernels))
    # the weight scale of a consumer whose input scale is Delta_A*(1-eps)
    input_eps = {n: tensor_eps.get(g.tensor_name(op_of[n].inputs[0]), 0.0) for n in op_of}
    for l in layers:
        if l.name in op_of and l.weight_type in ("int2", "int4", "int8"):
            op = op_of[l.name]
            k = R.tflite_kernel(kinds[l.name], snapped[l.name][0])
            cal[g.tensor_name(op.inputs[1])] = R.weight_qsv(
                kinds[l.name], k, R.WEIGHT_TYPES[l.weight_type],
                np.asarray(wstep[l.name]) * (1.0 + input_eps[l.name]))
    try:
        with _quiet():
            content = bytes(qt.quantize(cal, enable_progress_report=False).quantized_model)
    except Exception as e:
        raise ExportError(f"ai_edge_quantizer could not quantize the model: {e}") from e

    # ---- read back: types, weights, scales
    from tfprec.export.aeq_report import check_file
    qg = R.read_graph(content)
    order = [op.index for op in g.ops if op.name in R.WEIGHT_OPS]
    check_file(qg, layers, snapped, fmts, kinds, wide_to_8,
               {n: order.index(op.index) for n, op in op_of.items()}, input_eps)

    report = AeqExportReport(
        path=path, layers=layers, file_size_bytes=len(content), plan_bits=float(sum(
            lp.weight_bits * lp.num_weights + (lp.act_bits or 0) * lp.num_inputs
            for lp in plan.layers)),
        check_examples=0, check_source=source, sim_agreement=float("nan"),
        max_logit_diff=float("nan"), kernels="xnnpack", backend="ai_edge_quantizer",
        activation_type=act, op_table=runtime.op_table(content),
        mode="integer" if full_integer else "exact" if exact_ties else "fast",
        notes=[R.VERIFICATION_NOTES])
    if full_integer:
        report.notes.append(
            "full_integer: every operator LiteRT quantizes runs on integer kernels; "
            f"tensors the plan does not round carry {act} scales calibrated on "
            f"{min(len(xs), CALIBRATION_EXAMPLES)} examples (rounding the plan does not "
            "have): decisions as measured below, not exact by construction")
    report.substitutions = [f"{l.name}: {n}" for l in layers for n in l.notes]
    report.verified_families = sorted(set.intersection(*[set(l.families) for l in layers]))
    report.kernels = kernels
    if len(report.verified_families) < len(R.FAMILIES):
        report.notes.append(
            f"kernel combinations verified exact only on {report.verified_families}: "
            + "; ".join(f"{l.name} {l.kind} {l.act_type} x {l.weight_type} on {l.families}"
                        for l in layers if len(l.families) < len(R.FAMILIES)))

    # ---- decisions under every kernel family vs the fake-quant model
    xc = xs[:n_check]
    if len(xc):
        from tfprec.quantization.apply import logits_model, quantize_model
        fq = logits_model(quantize_model(model, plan,
                                         allow_fingerprint_mismatch=allow_fingerprint_mismatch))
        ref = np.asarray(fq.predict(feed(xc), batch_size=256, verbose=0), np.float64)
        dec = np.argmax(ref, -1)
        report.check_examples = len(xc)
        for fam in R.FAMILIES:
            try:
                out = runtime.run_family(content, feed(xc), fam, names=in_names)
            except Exception as e:
                op = runtime.missing_op(e)
                if op is not None and fam not in ("xnnpack", kernels):
                    # a family without that operator cannot load the file at
                    # all (BUILTIN_REF has no ELU): not a defect of the file
                    report.unavailable_families[fam] = op
                    report.notes.append(
                        f"not checked on the {fam} kernels: LiteRT's {fam} op "
                        f"resolver has no {op} operator")
                    continue
                raise ExportError(f"the exported model does not run under the "
                                  f"{fam} kernels: {e}") from e
            report.agreement_by_kernels[fam] = float(np.mean(np.argmax(out, -1) == dec))
            report.max_logit_diff_by_kernels[fam] = float(np.max(np.abs(out - ref)))
            if ys is not None:
                m = min(len(ys), len(out))
                report.accuracy_by_kernels[fam] = float(np.mean(np.argmax(out[:m], -1) == ys[:m]))
        if ys is not None:
            m = min(len(ys), len(dec))
            report.fake_quant_accuracy = float(np.mean(dec[:m] == ys[:m]))
        report.sim_agreement = report.agreement_by_kernels["xnnpack"]
        report.max_logit_diff = report.max_logit_diff_by_kernels["xnnpack"]
        exact = [f for f, v in report.agreement_by_kernels.items() if v == 1.0]
        report.exact_families = exact
        if len(exact) < len(R.FAMILIES) - len(report.unavailable_families):
            report.notes.append(
                "decisions equal the fake-quant model's on every check example only "
                f"under {exact or 'no'} kernels (requantization ties round differently "
                "per family)")
    if latency and len(xs):
        report.latency_s = runtime.median_latency(content, feed(xs), "xnnpack",
                                                  names=in_names)
    if baselines:
        from tfprec.export.aeq_report import baseline_rows
        report.baselines = baseline_rows(model, feed(xs), feed(xc), ys, latency, in_names)
    content = with_metadata(content, report)
    report.file_size_bytes = len(content)
    return write_checked(path, content, report, layers, strict)
