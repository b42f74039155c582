"""Deployment benchmark of the ai_edge_quantizer export backend.

    python benchmarks/deploy.py [--nets mnist_mlp,cifar10_vgg,mobilenet_v2]
                                [--select 2000] [--report 2000]
    python benchmarks/deploy.py --verify       # the kernel-combination table

For each network (the committed reference weights, examples/weights/), at
its cheapest plan whose fake-quant accuracy on the SELECTION split (the first
``--select`` test images) is within ``--max_drop`` percentage points of
float minus a safety margin (``--margin_pp``; by default the one-sigma
binomial error of a 0.5 pp drop on the selection split, 0.158 pp on 2000
images, as ``benchmarks/peers.py``) (``tfprec.calibrate.calibrate_plan``
... see :func:`cheapest_plan`),
measured on the disjoint REPORT split (the next ``--report`` images): file
size over TF's full-integer int8 PTQ file (targets <= 0.6 MLP, <= 0.75 CNN),
accuracy vs the fake-quant model's (target within 0.2 pp), decision
agreement with the fake-quant model (target >= 99.5 %) per kernel family,
and the median single-example latency over TF int8's; with ``--fast_file
1`` (default) the same for the plan exported with ``exact_ties=False`` (no
float clips between integer layers; ties tuned through the next layer's
weight scale), and with
``--integer_file 1`` (default) for ``full_integer=True`` (every operator on
integer kernels, as TF int8 PTQ; Add inputs on calibrated scales).  Plans use
per-channel weight ranges (``noise_gains(per_channel=True)``; ``--per_channel
0``: one range per tensor); the storage greedy that follows first tries
activations at 8 bits (``--act8``), then each weight layer one LiteRT
storage type down.

``--verify`` exports one-layer models for every (op, activation type,
weight type) combination with the multiplier nudged up and down, and
prints, per kernel family, the fraction of examples whose logits equal the
plan's float64 simulation: the source of
``tfprec.export.aeq_recipe.VERIFIED`` / ``TIE_DIRECTION``.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "examples"))

import tfprec  # noqa: E402  (first: selects Keras 2)
from tfprec._tf import keras  # noqa: E402
from tfprec.errors import UnsupportedModelError  # noqa: E402

TARGETS = {"mnist_mlp": 0.6, "cifar10_vgg": 0.75, "mobilenet_v2": 0.75}
FAMILIES = ("xnnpack", "optimized", "reference")
MOBILENET_EPOCHS = 3


# ------------------------------------------------------------------ nets
def load_net(name: str):
    """(model, dataset) of a benchmark network; UnsupportedModelError when
    tfprec cannot analyse it yet."""
    from tfprec.application import data as data_lib
    if name == "mnist_mlp":
        from common import load_reference
        return load_reference("mnist_mlp"), data_lib.load_dataset("mnist", flatten=True)
    if name == "cifar10_vgg":
        from common import load_reference
        return load_reference("cifar10_vgg"), data_lib.load_dataset("cifar10")
    if name == "mobilenet_v2":
        # keras.applications.MobileNetV2 at 32x32 (tfprec.models builder when
        # the installed tfprec has it), trained briefly on the CPU and cached;
        # checked for analysability first, on an untrained copy, so that an
        # unsupported model is reported before any training
        from tfprec.application import models
        ds = data_lib.load_dataset("cifar10")
        if "mobilenet_v2" in getattr(models, "BUILDERS", {}):
            probe = models.build("mobilenet_v2")
        else:
            probe = keras.applications.MobileNetV2(
                input_shape=(32, 32, 3), weights=None, classes=10,
                classifier_activation=None)
        tfprec.noise_gains(probe, ds.x_train[:8])  # UnsupportedModelError if not
        return models.cached_trained("mobilenet_v2", ds, epochs=MOBILENET_EPOCHS), ds
    raise SystemExit(f"unknown net {name!r}")


def deployed_bytes(plan) -> float:
    """Weight bytes of ``plan`` as this backend stores it: <= 4 bits 0.5
    byte (int4; depthwise int8: 1), 5..8 bits 1 byte, wider 4 (float32)."""
    total = 0.0
    for lp in plan.layers:
        b = lp.weight_bits
        per = 0.5 if b <= 4 and lp.layer_class != "DepthwiseConv2D" else (
            1.0 if b <= 8 else 4.0)
        total += per * lp.num_weights
    return total


def cheapest_plan(model, ds, n_select: int, max_drop_pp: float, max_bits: int = 16,
                  per_channel: bool = True,
                  methods=("cost_aware", "paper", "uniform")):
    """(plan, label, float accuracy, fake-quant accuracy) on the selection
    split.  ``tfprec.calibrate.calibrate`` with ``max_accuracy_drop`` and
    the memory cost finds each family's cheapest plan (``methods``: by
    default cost-aware, paper, uniform; measured_greedy is one flag away,
    slow on deep nets, and found no smaller file on the VGG) whose
    fake-quant accuracy on the selection
    split is within ``max_drop_pp`` percentage points of float; the one
    with the smallest :func:`deployed_bytes` is taken (the memory cost
    counts bits, the file stores int4 / int8 / float32).  ``per_channel``:
    weights on one range per output channel (``noise_gains(per_channel=
    True)``), as TFLite stores them."""
    from tfprec.planning.calibrate import calibrate
    xs, ys = ds.x_test[:n_select], ds.y_test[:n_select]
    gains = tfprec.noise_gains(model, ds.x_train[:1000], per_channel=per_channel)
    res = calibrate(model, gains, xs, ys, max_accuracy_drop=max_drop_pp, cost="memory",
                    max_bits=max_bits,
                    methods=tuple(methods))
    best = min(res.candidates, key=lambda c: deployed_bytes(c.plan))
    sizes = ", ".join(f"{c.method} {deployed_bytes(c.plan) / 1e3:.0f} kB" for c in res.candidates)
    return (best.plan, f"calibrate: {best.method} level {best.level} (deployed weights: "
            f"{sizes})", res.float_accuracy, best.quant_accuracy)


def storage_greedy(model, plan, xs, ys, min_accuracy: float, act8: bool = True,
                   moments=None, min_share: float = 0.0, order: str = "ratio",
                   range_search: bool = True):
    """``plan`` with weights moved down to the next LiteRT storage type
    (5..8 bits -> 4: int8 -> int4; > 8 -> 8: float32 -> int8) while the
    fake-quant accuracy on the selection split (xs, ys) stays >=
    ``min_accuracy``: the smallest file the greedy finds.  ``order``
    'ratio': each round measures every layer's move and takes the one
    saving the most bytes per accuracy lost (a loss counted as at least
    one example); a move that fails is not retried.  'largest': largest
    layers first, each move kept when it passes (two passes, so float32
    can reach int4).  ``act8``: first every activation planned at 2..7
    bits and every weight planned at 5..7 bits is raised to 8 (at 2..3
    bits: to 4), when that
    keeps the accuracy (such a tensor is int8 either way: the file's size
    and kernels do not change, and the INT4 moves get the accuracy budget
    the int8 tensors no longer spend).  ``moments``
    (``tfprec.quantization.rounding.input_moments``): every candidate's
    weights are rounded by GPTQ (``optimize_rounding``, with
    ``range_search``) instead of to nearest.  Layers holding less than ``min_share`` of the weights are not
    tried (a deep net's small layers barely change the file).  Returns
    (plan, accuracy, evaluations)."""
    from tfprec.quantization.apply import logits_model, quantize_model
    from tfprec.quantization.rounding import optimize_rounding
    cache: dict = {}

    def accuracy(p):
        m = model
        if moments is not None:
            r = optimize_rounding(model, p, moments=moments, cache=cache,
                                  range_search=range_search)
            m, p = r.model, r.plan
        q = logits_model(quantize_model(m, p))
        return float(np.mean(np.argmax(q.predict(xs, batch_size=256, verbose=0), -1) == ys))
    acc, n = accuracy(plan), 1
    if act8:
        up = {l.name: 8 for l in plan.layers if l.act_bits is not None and l.act_bits < 8}
        wup = {l.name: 8 if l.weight_bits > 4 else 4 for l in plan.layers
               if 4 < l.weight_bits < 8 or l.weight_bits < 4}
        if up or wup:
            cand = plan.with_bits(act_bits=up, weight_bits=wup)
            a, n = accuracy(cand), n + 1
            if a >= min_accuracy:
                plan, acc = cand, a
    total = sum(l.num_weights for l in plan.layers)

    def lower(p, lp):
        b = p.layer(lp.name).weight_bits
        to = 4 if 4 < b <= 8 and lp.layer_class != "DepthwiseConv2D" else (
            8 if b > 8 else None)
        return None if to is None else p.with_bits(weight_bits={lp.name: to})
    layers = [l for l in sorted(plan.layers, key=lambda l: -l.num_weights)
              if l.num_weights >= min_share * total]
    if order == "largest":
        for _ in range(2):
            for lp in layers:
                cand = lower(plan, lp)
                if cand is None:
                    continue
                a, n = accuracy(cand), n + 1
                if a >= min_accuracy:
                    plan, acc = cand, a
        return plan, acc, n
    failed = set()
    while True:
        best = None
        for lp in layers:
            cand = None if lp.name in failed else lower(plan, lp)
            if cand is None:
                continue
            a, n = accuracy(cand), n + 1
            if a < min_accuracy:
                failed.add(lp.name)      # not retried: lowering more only costs more
                continue
            saved = deployed_bytes(plan) - deployed_bytes(cand)
            score = saved / max(acc - a, 1.0 / len(ys))
            if best is None or score > best[0]:
                best = (score, cand, a)
        if best is None:
            break
        _, plan, acc = best
    return plan, acc, n


def bench(name: str, args) -> str:
    from tfprec.export.tflite import export_tflite
    try:
        model, ds = load_net(name)
    except (UnsupportedModelError, ValueError) as e:
        # UnsupportedModelError: tfprec cannot analyse it yet; ValueError:
        # tfprec.models has no such builder yet
        return f"## {name}\n\nnot supported yet: {type(e).__name__}: {e}\n"
    t = time.perf_counter()
    from tfprec.peers.matched import selection_margin_pp
    margin = selection_margin_pp(args.max_drop, args.select, args.margin_pp)
    sel_drop = args.max_drop - margin
    plan, how, acc_f, acc_sel = cheapest_plan(model, ds, args.select, sel_drop,
                                              args.max_bits, bool(args.per_channel),
                                              args.methods.split(","))
    how += ("; weights per output channel" if args.per_channel
            else "; one weight range per tensor")
    moments = None
    if args.rounding == "gptq":
        from tfprec.quantization.rounding import examples_needed, input_moments
        n_round = args.rounding_examples or examples_needed(model)   # per network
        moments = input_moments(model, ds.x_train[:n_round])
    if args.storage_greedy:
        before = deployed_bytes(plan)
        plan, acc_sel, n_eval = storage_greedy(
            model, plan, ds.x_test[:args.select], ds.y_test[:args.select],
            acc_f - sel_drop / 100, bool(args.act8), moments, args.min_share,
            args.greedy_order, bool(args.range_search))
        how += (f"; then storage greedy ({args.greedy_order}, {n_eval} evaluations, "
                f"{args.rounding} "
                f"rounding): deployed weights "
                f"{before / 1e3:.0f} -> {deployed_bytes(plan) / 1e3:.0f} kB")
    export_model = model
    if moments is not None:
        from tfprec.quantization.rounding import optimize_rounding
        plan_in = plan
        r = optimize_rounding(model, plan, moments=moments,
                              range_search=bool(args.range_search))
        export_model, plan = r.model, r.plan
        how += (f"; weights rounded by GPTQ on {n_round} training "
                f"images (range search {'on' if args.range_search else 'off'}: "
                f"{sum(a.weight_channel_ranges != b.weight_channel_ranges for a, b in zip(r.plan.layers, plan_in.layers))} "
                "layers with some channels on half their range) (the TF baselines below are built from the rounded model)")
    lo, hi = args.select, args.select + args.report
    x, y = ds.x_test[lo:hi], ds.y_test[lo:hi]
    with tempfile.TemporaryDirectory() as d:
        rep = export_tflite(export_model, plan, os.path.join(d, f"{name}.tflite"), x,
                            backend="ai_edge_quantizer", labels=y, check_examples=len(x),
                            baselines=True, latency=True)
        extra = {}          # the same plan traded for speed, each with its own baselines
        for flag_on, tag, kw in ((args.fast_file, "fast", {"exact_ties": False}),
                                 (args.integer_file, "integer", {"full_integer": True})):
            if flag_on:
                extra[tag] = export_tflite(
                    export_model, plan, os.path.join(d, f"{name}_{tag}.tflite"), x,
                    backend="ai_edge_quantizer", labels=y, check_examples=len(x),
                    baselines=True, latency=True, **kw)
        tuned = {}
        for fam in (FAMILIES[1:] if args.tuned_files else ()):
            r2 = export_tflite(export_model, plan, os.path.join(d, f"{name}_{fam}.tflite"),
                               x,
                               backend="ai_edge_quantizer", labels=y,
                               check_examples=len(x), kernels=fam)
            tuned[fam] = r2
    ptq = next(r for r in rep.baselines if r["name"] == "TF int8 PTQ")
    acc_f_rep = float(np.mean(np.argmax(model.predict(x, batch_size=256, verbose=0), -1) == y))
    ratio = rep.file_size_bytes / ptq["size_bytes"]
    from tfprec.export.runtime import run_family
    # TF int8 PTQ's own agreement with the float model (XNNPACK), for scale
    ptq_agree = float(np.mean(np.argmax(run_family(ptq["content"], x, "xnnpack"), -1)
                              == np.argmax(export_model.predict(x, batch_size=256, verbose=0), -1)))
    lines = [f"## {name}", "",
             f"plan: {how}, smallest file (<= {args.max_bits} bits) within "
             f"{sel_drop:.3f} pp of float ({args.max_drop:g} pp minus a {margin:.3f} pp "
             f"margin) on the selection split ({args.select} images: float {100 * acc_f:.2f} %, "
             f"fake-quant {'-' if acc_sel is None else f'{100 * acc_sel:.2f}'} %); bits "
             + ", ".join(f"{l.name} W{l.weight_bits}/A{l.act_bits}" for l in plan.layers),
             f"report split: {len(x)} test images {lo}..{hi - 1} (float "
             f"{100 * acc_f_rep:.2f} %, fake-quant {100 * rep.fake_quant_accuracy:.2f} %: "
             f"{100 * (rep.fake_quant_accuracy - acc_f_rep):+.2f} pp; within "
             f"{args.max_drop:g} pp: "
             f"{'yes' if 100 * (acc_f_rep - rep.fake_quant_accuracy) <= args.max_drop + 1e-9 else 'NO'}); "
             f"{time.perf_counter() - t:.0f} s", "",
             f"- size / TF int8 PTQ: {rep.file_size_bytes} / {ptq['size_bytes']} = "
             f"{ratio:.3f} (target <= {TARGETS[name]}): "
             f"{'met' if ratio <= TARGETS[name] else 'NOT met'}"]
    for fam in FAMILIES:
        d_pp = 100 * (rep.accuracy_by_kernels[fam] - rep.fake_quant_accuracy)
        agr = rep.agreement_by_kernels[fam]
        lines.append(f"- {fam}: accuracy {100 * rep.accuracy_by_kernels[fam]:.2f} % "
                     f"(fake-quant {100 * rep.fake_quant_accuracy:.2f} %, {d_pp:+.2f} pp, "
                     f"target within 0.2: {'met' if abs(d_pp) <= 0.2 else 'NOT met'}); "
                     f"agreement {100 * agr:.2f} % (target >= 99.5: "
                     f"{'met' if agr >= 0.995 else 'NOT met'})")
    for fam, r2 in tuned.items():
        d_pp = 100 * (r2.accuracy_by_kernels[fam] - r2.fake_quant_accuracy)
        lines.append(f"- file tuned for {fam} (kernels='{fam}'), run on {fam}: accuracy "
                     f"{100 * r2.accuracy_by_kernels[fam]:.2f} % ({d_pp:+.2f} pp), agreement "
                     f"{100 * r2.agreement_by_kernels[fam]:.2f} % (target >= 99.5: "
                     f"{'met' if r2.agreement_by_kernels[fam] >= 0.995 else 'NOT met'}); "
                     f"size {r2.file_size_bytes} bytes")
    lines.append(f"- median single-example latency (XNNPACK, 1 thread): "
                 f"{1e6 * rep.latency_s:.0f} us vs TF int8 {1e6 * ptq['latency_s']:.0f} us "
                 f"= {rep.latency_s / ptq['latency_s']:.2f}x")
    what = {"fast": "fast file (exact_ties=False: no float clip between integer layers, "
                    "ties tuned through the next layer's weight scale)",
            "integer": "integer file (full_integer=True: every operator on integer "
                       "kernels, Add inputs on calibrated int8 scales)"}
    for tag, r in extra.items():
        # the same plan traded for speed: measured side by side with its own
        # TF int8 baseline (same batch, repetitions)
        fptq = next(b for b in r.baselines if b["name"] == "TF int8 PTQ")
        lines.append(
            f"- {what[tag]}: size {r.file_size_bytes} bytes "
            f"({r.file_size_bytes / fptq['size_bytes']:.3f} of TF int8); agreement "
            + ", ".join(f"{fam} {100 * r.agreement_by_kernels[fam]:.2f} %"
                        for fam in FAMILIES)
            + "; accuracy " + ", ".join(
                f"{fam} {100 * (r.accuracy_by_kernels[fam] - r.fake_quant_accuracy):+.2f} pp"
                for fam in FAMILIES)
            + f" vs fake-quant; latency {1e6 * r.latency_s:.0f} us vs TF int8 "
            f"{1e6 * fptq['latency_s']:.0f} us = {r.latency_s / fptq['latency_s']:.2f}x"
            + ("" if fptq.get("accuracy") is None else
               f" (TF int8 PTQ: accuracy {100 * (fptq['accuracy'] - acc_f_rep):+.2f} pp "
               f"vs float, decisions equal to float's on {100 * ptq_agree:.2f} %)"))
    return "\n".join(lines) + "\n\n" + rep.to_markdown()


# ------------------------------------------------------------------ verify
COMBOS = [(k, a, w) for k in ("dense", "conv2d", "depthwise")
          for a in ("int8", "int16") for w in ("int4", "int8", "int2", "int4_block32")]
# what AEQ 0.10's policy accepts for static (integer-activation) ops
SUPPORTED = [c for c in COMBOS if c[2] in ("int4", "int8")
             and not (c[0] == "depthwise" and c[2] == "int4")]


def _one_layer(kind: str, seed: int = 0):
    L = keras.layers
    keras.utils.set_random_seed(seed)
    shape = {"dense": (64,), "conv2d": (8, 8, 3), "depthwise": (8, 8, 4)}[kind]
    x = inp = keras.Input(shape, name="input")
    if kind == "dense":
        x = L.Dense(32, name="layer")(x)
    elif kind == "conv2d":
        x = L.Conv2D(8, 3, name="layer")(x)
    else:
        x = L.DepthwiseConv2D(3, name="layer")(x)
    x = L.ReLU(max_value=2.0, name="clip")(x)
    if kind != "dense":
        x = L.Flatten(name="flatten")(x)
    m = keras.Model(inp, L.Dense(10, name="logits")(x))
    rng = np.random.default_rng(seed)
    for layer in m.layers:
        if layer.weights:
            layer.set_weights([rng.normal(0, 0.3, w.shape).astype(np.float32)
                               for w in layer.get_weights()])
    return m, rng.uniform(0, 1, (400, *shape)).astype(np.float32)


def verify(combos=COMBOS, n: int = 400) -> list:
    """Rows (kind, act, weight, direction, {family: fraction of examples
    whose logits equal the float64 simulation of the plan within 1e-5},
    error or '')."""
    from tfprec.export.aeq import export_aeq
    from tfprec.export.runtime import run_family
    from tfprec.export.tflite import simulate_plan
    rows = []
    for kind, act, wt in combos:
        m, x = _one_layer(kind)
        gains = tfprec.noise_gains(m, x[:200])
        p = tfprec.uniform_plan(gains, bits=8)
        wb = {"int2": 2, "int4": 4, "int4_block32": 4, "int8": 7}[wt]
        ab = 10 if act == "int16" else 5
        plan = p.with_bits(weight_bits={"layer": wb, "logits": 8},
                           act_bits={"layer": 8 if act == "int8" else 12, "logits": ab})
        sim = simulate_plan(m, plan, x[:n])
        for direction in (1, -1):
            res, err = {}, ""
            with tempfile.TemporaryDirectory() as d:
                try:
                    path = os.path.join(d, "v.tflite")
                    export_aeq(m, plan, path, x, check_examples=0, weight_types={"layer": wt},
                               _directions={"layer": direction}, _unverified=True)
                    content = open(path, "rb").read()
                    for fam in FAMILIES:
                        out = run_family(content, x[:n], fam)
                        tol = 1e-5 * max(1.0, float(np.abs(sim).max()))
                        res[fam] = float(np.mean(np.max(np.abs(out - sim), -1) <= tol))
                except Exception as e:       # noqa: BLE001 - reported
                    err = f"{type(e).__name__}: {str(e)[:120]}"
            rows.append((kind, act, wt, direction, res, err))
            print(f"\nVERIFY {kind} {act} {wt} dir={direction:+d} {res} {err}", flush=True)
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nets", default="mnist_mlp,cifar10_vgg,mobilenet_v2")
    ap.add_argument("--select", type=int, default=2000)
    ap.add_argument("--report", type=int, default=2000)
    ap.add_argument("--max_drop", type=float, default=0.5)
    ap.add_argument("--margin_pp", type=float, default=-1.0,
                    help="safety margin (pp) kept on the selection split; -1: the "
                         "one-sigma binomial error of --max_drop on --select images")
    ap.add_argument("--max_bits", type=int, default=16,
                    help="no tensor of the plan above this many bits")
    ap.add_argument("--storage_greedy", type=int, default=1,
                    help="1: lower weights to the next LiteRT storage type where the "
                    "selection accuracy allows (see storage_greedy)")
    ap.add_argument("--fast_file", type=int, default=1,
                    help="1: also export the plan with exact_ties=False (no float "
                         "clips between integer layers) and report its agreement, "
                         "accuracy and latency")
    ap.add_argument("--integer_file", type=int, default=1,
                    help="1: also export the plan with full_integer=True (every "
                         "operator on integer kernels) and report its agreement, "
                         "accuracy and latency")
    ap.add_argument("--tuned_files", type=int, default=1,
                    help="1: also export files with ties tuned for the optimized and "
                    "the reference kernels and report each on its own family")
    ap.add_argument("--per_channel", type=int, default=1,
                    help="1: weights on one power-of-two range per output channel "
                         "(noise_gains(per_channel=True)); 0: one per tensor")
    ap.add_argument("--act8", type=int, default=1,
                    help="1: the storage greedy first raises activations planned "
                         "below 8 bits and weights of 5..7 bits to 8 (int8 either way)")
    ap.add_argument("--rounding", choices=("gptq", "nearest"), default="gptq",
                    help="gptq: weights rounded onto the plan's grid by GPTQ "
                         "(tfprec.quantization.rounding) in the storage greedy and the "
                         "export; nearest: round to nearest, the paper's quantizer")
    ap.add_argument("--range_search", type=int, default=1,
                    help="1: GPTQ also tries each channel on half its range "
                         "(optimize_rounding(range_search=True))")
    ap.add_argument("--rounding_examples", type=int, default=0,
                    help="training images for GPTQ's input moments; 0: 8 input rows "
                         "per kernel row of every layer (rounding.examples_needed: "
                         "MLP 6272, VGG 9216, MobileNetV2 10240)")
    ap.add_argument("--greedy_order", choices=("ratio", "largest"), default="ratio",
                    help="storage greedy: best bytes saved per accuracy lost each "
                         "round, or largest layers first")
    ap.add_argument("--min_share", type=float, default=0.0,
                    help="the storage greedy skips layers holding less than this "
                         "fraction of the weights")
    ap.add_argument("--methods", default="cost_aware,paper,uniform",
                    help="calibrate families searched for the starting plan")
    ap.add_argument("--verify", action="store_true")
    ap.add_argument("--all_combos", action="store_true",
                    help="--verify also int2 and 32-blockwise int4 weights")
    args = ap.parse_args(argv)
    if args.verify:
        verify(COMBOS if args.all_combos else SUPPORTED)
        return
    for name in args.nets.split(","):
        print(bench(name.strip(), args), flush=True)


if __name__ == "__main__":
    main()
