"""Which models tfprec analyses, by which path, and how fast (issue 10).

For each network -- the paper's MNIST MLP and CIFAR-10 VGG-like net
(committed weights, ``examples/weights``) and the tf_keras.applications
classifiers MobileNetV2, MobileNetV3Small, ResNet50 and DenseNet121
(``weights=None``, 32x32x3, 10 classes, briefly trained on the CIFAR-10
copy: ``--train_examples`` images, ``--epochs`` epochs, cached) -- one row:

* layers by path: weight ops with a registered rule (Dense, Conv2D,
  DepthwiseConv2D; the ``affine`` rule of a BatchNormalization that follows
  no weight layer is counted apart), weight ops on the generic path (the
  layer run as itself, per-example norms by ``tf.vectorized_map``), and
  weightless ops (tfprec's own pooling / add / ... ops and generic
  ``layer`` ops, run through the layer's own call);
* the gains pass (``noise_gains``, warm: traced once on a few examples
  before) over ``--gain_examples`` examples, in seconds and over the time
  of one ``model.fit`` epoch on the same examples with the same batch size
  (also warm; on a copy of the model);
* the cost-aware (compute) plan at the analytic bound ``--target`` (the
  paper's faithful bound, ``tfprec.cost_aware_plan``), or every tensor at
  8 bits where even 16 bits cannot meet that bound (briefly trained
  networks): min and max bits;
* fake-quant accuracy and float accuracy on ``--eval_examples`` test images;
* TFLite export of that plan (``tfprec.export.export_tflite``, default
  backend): file size and decision agreement with the fake-quant model on
  the same test images (``"-"`` with the reason when the export fails).

Then the two speed checks of the issue, each measured side by side in this
run:

* MobileNetV2 at 64x64, 10 classes, 1024 examples: gains pass seconds over
  one fit epoch (target: at most 8);
* the generic weight path over the registered one on the same Conv2D
  network (the CIFAR-10 VGG-like net, ``registered_rules(False)``), same
  examples (target: at most 5), and the largest relative difference of
  their gains.

Usage:
  python benchmarks/coverage.py [--nets mnist_mlp,cifar10_vgg,mobilenet_v2,
      mobilenet_v3_small,resnet50,densenet121] [--gain_examples 512]
      [--eval_examples 1000] [--train_examples 10000] [--epochs 3]
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import time

import numpy as np

import tfprec
from tfprec._tf import keras
from tfprec.application import data, models
from tfprec.errors import TfprecError, UnattainableTargetError
from tfprec.statistics.graph import parse_model, registered_rules

HERE = os.path.dirname(os.path.abspath(__file__))
WEIGHTS = os.path.join(HERE, os.pardir, "examples", "weights")
PAPER = {"mnist_mlp": ("mnist", {"flatten": True}, {}, "mnist_mlp.h5"),
         "cifar10_vgg": ("cifar10", {}, {"batchnorm": False}, "cifar10_vgg.h5")}
ALL = ["mnist_mlp", "cifar10_vgg", *models.APPLICATIONS]


def paths(model) -> dict:
    """Counts of ops by path in the parsed graph."""
    g = parse_model(model)
    c = collections.Counter()
    for op in g.ops:
        if op.kind in ("dense", "conv2d", "depthwise"):
            c["registered"] += 1
        elif op.kind == "affine":
            c["affine"] += 1
        elif op.kind == "generic":
            c["generic"] += 1
        elif op.kind == "layer":
            c["layer call"] += 1
        else:
            c["builtin"] += 1
    return c


def load(net: str, args):
    if net in PAPER:
        ds_name, kw, bkw, wfile = PAPER[net]
        ds = data.load_dataset(ds_name, args.data_dir, **kw)
        model = models.build(net, **bkw)
        model.load_weights(os.path.join(WEIGHTS, wfile))
        return ds, model, "committed weights"
    full = data.load_dataset("cifar10", args.data_dir)
    ds = data.Dataset(full.x_train[:args.train_examples], full.y_train[:args.train_examples],
                      full.x_test, full.y_test, full.num_classes, full.name, full.source)
    model = models.cached_trained(net, ds, epochs=args.epochs, cache_dir=args.cache_dir)
    return ds, model, f"{args.epochs} epochs on {len(ds.x_train)} images"


def timed_side_by_side(model, x, y, batch: int, reps: int = 2):
    """(gains, gains seconds, fit-epoch seconds): the gains pass over ``x``
    and one ``model.fit`` epoch over (x, y) on a copy of ``model`` (the model
    is not touched), same batch size, each traced first, then run ``reps``
    times alternately; the minimum of each side (the machine is shared)."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    models.compile_model(copy)
    copy.fit(x[:batch], y[:batch], epochs=1, batch_size=batch, verbose=0)  # trace
    tfprec.noise_gains(model, x[:batch], batch_size=batch)                # trace
    t_g, t_f = [], []
    for _ in range(reps):
        t = time.perf_counter()
        gains = tfprec.noise_gains(model, x, batch_size=batch)
        t_g.append(time.perf_counter() - t)
        t = time.perf_counter()
        copy.fit(x, y, epochs=1, batch_size=batch, verbose=0, shuffle=False)
        t_f.append(time.perf_counter() - t)
    return gains, min(t_g), min(t_f)


def gains_seconds(model, x, batch: int, reps: int = 2):
    tfprec.noise_gains(model, x[:batch], batch_size=batch)                # trace
    t = []
    for _ in range(reps):
        t0 = time.perf_counter()
        g = tfprec.noise_gains(model, x, batch_size=batch)
        t.append(time.perf_counter() - t0)
    return g, min(t)


def row(net: str, args) -> dict:
    ds, model, how = load(net, args)
    x, y = models.fit_inputs(model, ds.x_train[:args.gain_examples]), \
        ds.y_train[:args.gain_examples]
    xe = models.fit_inputs(model, ds.x_test[:args.eval_examples])
    ye = ds.y_test[:args.eval_examples]
    c = paths(model)
    gains, t_g, t_f = timed_side_by_side(model, x, y, args.batch_size)
    try:
        plan = tfprec.cost_aware_plan(gains, args.target, cost="compute")
        how_plan = f"cost-aware, bound {args.target:g}"
    except UnattainableTargetError:      # bound vacuous even at 16 bits
        plan = tfprec.uniform_plan(gains, bits=8)
        how_plan = "uniform 8 (bound unattainable)"
    bits = [b for l in plan.layers for b in (l.weight_bits, l.act_bits)]
    q = tfprec.quantize_model(model, plan)
    zq = tfprec.logits_model(q).predict(xe, batch_size=256, verbose=0)
    zf = model.predict(xe, batch_size=256, verbose=0)
    acc_q, acc_f = float(np.mean(zq.argmax(1) == ye)), float(np.mean(zf.argmax(1) == ye))
    size, agree = "-", "-"
    try:
        from tfprec.export import agreement, export_tflite, tflite_predict
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, f"{net}.tflite")
            rep = export_tflite(model, plan, path, representative_data=x)
            size = f"{os.path.getsize(path)} B ({getattr(rep, 'backend', 'exact')})"
            agree = f"{100 * agreement(zq, tflite_predict(path, xe)):.2f} %"
    except (TfprecError, ValueError, RuntimeError) as e:
        size = f"- ({type(e).__name__}: {str(e)[:80]})"
    return dict(net=net, how=f"{how}; {how_plan}", c=c, t_g=t_g, t_f=t_f, bits=(min(bits), max(bits)),
                acc_q=acc_q, acc_f=acc_f, size=size, agree=agree)


def speed_checks(args) -> None:
    keras.utils.set_random_seed(0)
    m = models.build("mobilenet_v2", input_shape=(64, 64, 3))
    rng = np.random.default_rng(0)
    x = rng.random((1024, 64, 64, 3), dtype=np.float32)
    y = rng.integers(0, 10, 1024)
    _, t_g, t_f = timed_side_by_side(m, x, y, args.batch_size)
    print(f"MobileNetV2 64x64, 1024 examples, batch {args.batch_size}: gains "
          f"{t_g:.1f} s, fit epoch {t_f:.1f} s, ratio {t_g / t_f:.2f} (target <= 8)")
    ds, vgg, _ = load("cifar10_vgg", args)
    x = ds.x_train[:args.gain_examples]
    with registered_rules(False):
        vgg2 = models.build("cifar10_vgg", batchnorm=False)
        vgg2.set_weights(vgg.get_weights())
        kinds = collections.Counter(op.kind for op in parse_model(vgg2).weight_ops)
        gains_seconds(vgg2, x[:args.batch_size], args.batch_size, reps=1)   # trace
    gains_seconds(vgg, x[:args.batch_size], args.batch_size, reps=1)        # trace
    t_reg, t_gen = [], []
    for _ in range(2):                          # alternately, minimum of each
        g_reg, t = gains_seconds(vgg, x, args.batch_size, reps=1)
        t_reg.append(t)
        with registered_rules(False):
            g_gen, t = gains_seconds(vgg2, x, args.batch_size, reps=1)
        t_gen.append(t)
    t_reg, t_gen = min(t_reg), min(t_gen)
    diff = max(max(abs(a.e_w - b.e_w) / a.e_w, abs(a.e_a - b.e_a) / max(a.e_a, 1e-30))
               for a, b in zip(g_reg.layers, g_gen.layers))
    print(f"generic vs registered weight path, CIFAR-10 VGG-like net "
          f"({dict(kinds)} on the generic side), {len(x)} examples: registered "
          f"{t_reg:.1f} s, generic {t_gen:.1f} s, ratio {t_gen / t_reg:.2f} "
          f"(target <= 5); largest relative gain difference {diff:.1e}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nets", default=",".join(ALL))
    ap.add_argument("--gain_examples", type=int, default=512)
    ap.add_argument("--eval_examples", type=int, default=1000)
    ap.add_argument("--train_examples", type=int, default=10000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch_size", type=int, default=128)
    ap.add_argument("--target", type=float, default=0.01)
    ap.add_argument("--data_dir", default=None)
    ap.add_argument("--cache_dir", default=os.path.join(HERE, ".cache"))
    ap.add_argument("--skip_speed_checks", action="store_true")
    args = ap.parse_args(argv)
    print(f"{'net':<20}{'registered':>11}{'affine':>7}{'generic':>8}{'layer call':>11}"
          f"{'builtin':>8}{'gains s':>9}{'fit s':>7}{'ratio':>6}{'bits':>7}"
          f"{'acc fq':>8}{'acc fl':>8}  tflite bytes / agreement", flush=True)
    for net in args.nets.split(","):
        r = row(net.strip(), args)
        c = r["c"]
        print(f"{r['net']:<20}{c['registered']:>11}{c['affine']:>7}{c['generic']:>8}"
              f"{c['layer call']:>11}{c['builtin']:>8}{r['t_g']:>9.1f}{r['t_f']:>7.1f}"
              f"{r['t_g'] / r['t_f']:>6.1f}{'%d-%d' % r['bits']:>7}"
              f"{100 * r['acc_q']:>7.2f}%{100 * r['acc_f']:>7.2f}%  {r['size']} / "
              f"{r['agree']}   [{r['how']}]", flush=True)
    if not args.skip_speed_checks:
        speed_checks(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
