"""The mismatch predictor against the measured mismatch (issue 13, part A).

For the MNIST MLP, the CIFAR-10 VGG-like net and ResNet-20, over the
B_min sweep of the paper's rule and over uniform plans, on held-out test
images disjoint from the gains' calibration images (training images), this
prints one row per level:

  predicted mismatch (:func:`tfprec.planning.predict.predicted_mismatch`,
  the Gaussian estimate, independent-classes form; ``union`` form beside it),
  measured mismatch k/n (fake-quant decisions vs float,
  :class:`tfprec.planning.evaluate.Evaluator`) with its one-sided 95 %
  Clopper-Pearson upper limit, the paper's bound, the per-example bound and
  the predicted/measured ratio;

then a verdict line per network: whether the prediction is within a factor
of 2 of the measurement at every level where at least 20 mismatches are
measured, and the worst ratio there; and the same verdict restricted to
the model's domain, the levels where no layer rounds more than half of its
weights to zero (column ``zeroed``: the largest share over layers of
weights with |w| < Delta_W / 2).  Beyond it the rounding error is no longer
small independent noise: a weight that rounds to 0 has error exactly -w,
and these errors add up coherently to minus the layer's own contribution
to the margin, which the zero-mean Gaussian model cannot see (at uniform
B=2 or 3 the measured mismatch is 5-15x the prediction).

Calibration images: by default the test images after the evaluation ones
(``--calibration_split test``), which follow the held-out distribution.
The gains on *training* images (``--calibration_split train``) under-predict
on a well-trained network: its training margins are far larger (MNIST MLP:
smallest top-2 margin 0.88 on 1000 training images, 0.0008 on 5000 test
images), and the Gaussian tail is very sensitive to them.  Levels are evaluated only where the
prediction lies in [1e-4, 0.7] (below, too few mismatches to measure;
above, everything flips).

Weights: ``examples/weights/mnist_mlp.h5`` (for ``models.mnist_mlp()``) and
``examples/weights/cifar10_vgg.h5`` (for ``models.cifar10_vgg(batchnorm=False)``,
BN folded) when present, else :func:`tfprec.models.cached_trained` with a
short CPU schedule (cached under ``benchmarks/.cache``); ResNet-20 always
uses ``cached_trained`` (few epochs).  The first line of each network says
which.

Usage:
  python benchmarks/predictor.py [--nets mnist_mlp,cifar10_vgg,resnet20]
      [--calibration_examples 1000] [--eval_examples 5000] [--data_dir DIR]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

import tfprec
from tfprec.application import data, models
from tfprec.planning import calibrate as C
from tfprec.planning import cost_aware as CA
from tfprec.planning import predict as P
from tfprec.planning import rules
from tfprec.planning.evaluate import Evaluator
from tfprec.statistics.graph import parse_model

HERE = os.path.dirname(os.path.abspath(__file__))
WEIGHTS = os.path.join(HERE, os.pardir, "examples", "weights")
NETS = {  # name: (dataset, load kwargs, builder kwargs, weights file, CPU epochs)
    "mnist_mlp": ("mnist", {"flatten": True}, {}, "mnist_mlp.h5", 3),
    "cifar10_vgg": ("cifar10", {}, {"batchnorm": False}, "cifar10_vgg.h5", 3),
    "resnet20": ("cifar10", {}, {}, None, 2),
}
LOW, HIGH = 1e-4, 0.7          # predicted range of the evaluated levels
MIN_COUNT = 20                  # mismatches needed for a verdict at a level
ZEROED_MAX = 0.5                # the Gaussian model's domain (see the doc)


def load(net: str, args):
    ds_name, kw, bkw, wfile, epochs = NETS[net]
    ds = data.load_dataset(ds_name, args.data_dir, **kw)
    path = os.path.join(WEIGHTS, wfile) if wfile else None
    if path and os.path.isfile(path):
        model = models.build(net, **bkw)
        model.load_weights(path)
        return ds, model, f"well-trained weights {os.path.relpath(path, HERE)}"
    model = models.cached_trained(net, ds, epochs=epochs, cache_dir=args.cache_dir,
                                  builder_kwargs=bkw or None)
    why = "" if not wfile else f" ({wfile} not found)"
    return ds, model, f"cached_trained, {epochs} epochs{why}"


def run(net: str, args) -> list:
    t0 = time.perf_counter()
    ds, model, source = load(net, args)
    print(f"== {net}: {source}; float test accuracy "
          f"{100 * models.accuracy(model, ds):.2f} %", flush=True)
    xe = ds.x_test[:args.eval_examples]
    if args.calibration_split == "test":      # the test images after xe
        xc = ds.x_test[args.eval_examples:args.eval_examples + args.calibration_examples]
    else:
        xc = ds.x_train[:args.calibration_examples]
    gains = tfprec.noise_gains(model, xc, per_class=True, batch_size=args.batch_size)
    t1 = time.perf_counter()
    print(f"   gains on {len(xc)} {args.calibration_split} images ({t1 - t0:.0f} s "
          f"incl. load); evaluation on the first {len(xe)} test images", flush=True)
    ev = Evaluator(model, xe, batch_size=args.batch_size)
    # folded weights, for the share of each layer's weights that round to 0
    kernels = [np.abs(np.concatenate([op.attrs["kernel"].ravel()] + (
        [] if op.attrs["bias"] is None else [op.attrs["bias"].ravel()])))
        for op in parse_model(model).weight_ops]
    print(f"   {'plan':<12} {'predicted':>10} {'union':>10} {'measured':>14} "
          f"{'ucl95':>9} {'bound':>9} {'per-ex':>9} {'pred/meas':>9} {'zeroed':>6}",
          flush=True)
    ratios, in_domain = [], []
    for fam in ("paper", "uniform"):
        for lev in sorted(rules_levels(gains, fam)):
            plan = (tfprec.paper_plan(gains, b_min=lev) if fam == "paper"
                    else tfprec.uniform_plan(gains, bits=lev))
            pred = P.predicted_mismatch(plan, gains)
            if not LOW <= pred <= HIGH:
                continue
            k = ev.measure(plan).num_mismatch
            n = ev.n
            ucl = C.clopper_pearson_upper(k, n)
            ratio = pred / (k / n) if k else float("inf")
            zeroed = max(float(np.mean(w < l.weight_step / 2))
                         for w, l in zip(kernels, plan.layers))
            if k >= MIN_COUNT:
                ratios.append(ratio)
                if zeroed <= ZEROED_MAX:
                    in_domain.append(ratio)
            print(f"   {rules.level_text(fam, lev):<12} {pred:10.4g} "
                  f"{P.predicted_mismatch(plan, gains, 'union'):10.4g} "
                  f"{k:6d}/{n} ={k / n:6.4f} {ucl:9.4g} {plan.bound():9.3g} "
                  f"{CA.per_example_bound(plan, gains):9.3g} {ratio:9.3g} "
                  f"{zeroed:6.2f}", flush=True)

    # allocation under the prediction, no evaluation; then measured
    for t in args.plan_targets:
        t2 = time.perf_counter()
        try:
            pp = CA.cost_aware_plan(gains, t, criterion="predicted")
        except tfprec.UnattainableTargetError as e:
            print(f"   cost_aware_predicted at {t:g}: {e}", flush=True)
            continue
        secs = time.perf_counter() - t2
        k = ev.measure(pp).num_mismatch
        print(f"   cost_aware_predicted at predicted {t:g}: predicted "
              f"{P.predicted_mismatch(pp, gains):.4g}, measured {k}/{ev.n} "
              f"(ucl95 {C.clopper_pearson_upper(k, ev.n):.4g}), compute "
              f"{pp.cost().total_compute:.4g} full adders, memory "
              f"{pp.cost().total_memory:.4g} bits; search {secs:.1f} s", flush=True)

    def verdict(rs):
        ok = bool(rs) and all(0.5 <= r <= 2.0 for r in rs)
        worst = max(rs, key=lambda r: abs(np.log(r))) if rs else float("nan")
        return (f"{'within' if ok else 'NOT within'} a factor of 2 at all "
                f"{len(rs)} levels with >= {MIN_COUNT} mismatches (worst "
                f"predicted/measured {worst:.3g})")
    print(f"   verdict {net}: {verdict(ratios)}; {ev.passes} fake-quant passes, "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    print(f"   verdict {net}, levels where no layer rounds more than "
          f"{ZEROED_MAX:.0%} of its weights to 0: {verdict(in_domain)}", flush=True)
    return ratios


def rules_levels(gains, fam):
    from tfprec.planning.budget import rule_levels
    return rule_levels(gains, fam)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nets", default="mnist_mlp,cifar10_vgg,resnet20")
    ap.add_argument("--calibration_examples", type=int, default=2000,
                    help="images the gains are computed on (see --calibration_split)")
    ap.add_argument("--eval_examples", type=int, default=5000,
                    help="test images the mismatch is measured on (the first ones)")
    ap.add_argument("--calibration_split", choices=("test", "train"), default="test",
                    help="where the gains' images come from: 'test' (default), "
                         "the test images after the evaluation ones, the same "
                         "distribution as a validation split; 'train', the "
                         "training images, on which a well-trained network's "
                         "margins are far larger than on held-out data")
    ap.add_argument("--plan_targets", type=float, nargs="*", default=[0.01],
                    help="predicted-mismatch targets of cost_aware_plan("
                         "criterion='predicted') plans to build and measure")
    ap.add_argument("--batch_size", type=int, default=250)
    ap.add_argument("--data_dir", default=None,
                    help="folder with mnist.npz / cifar10_jpeg75.npz "
                         "(default $TFPREC_DATA_DIR, then ../shared/data)")
    ap.add_argument("--cache_dir", default=os.path.join(HERE, ".cache"))
    args = ap.parse_args(argv)
    nets = [n.strip() for n in args.nets.split(",") if n.strip()]
    bad = [n for n in nets if n not in NETS]
    if bad:
        ap.error(f"--nets: unknown {bad}; choose from {list(NETS)}")
    for net in nets:
        run(net, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
