"""Quantization-aware fine-tuning of a low-precision tfprec plan on MNIST.

Trains the paper's MNIST MLP (METHOD.md section 5: 784-512-512-512-10 by
default, hidden activation clip(x, 0, 2), inputs in [0, 1], weights clipped
to [-1, 1]) in float, computes the noise gains, makes a low-precision plan,
builds the fake-quant model with :func:`tfprec.quantization.apply.quantize_model` and
fine-tunes it with ``compile``/``fit`` (straight-through gradients through
the fixed-point quantizers).  Prints test accuracy of the float model and of
the fixed-point model before and after fine-tuning.

    python examples/finetune_qat.py                      # paper rule, B_min = 2
    python examples/finetune_qat.py --method uniform --level 2
    python examples/finetune_qat.py --data /path/to/mnist.npz --hidden 256,256

``--data`` is an ``.npz`` with uint8 arrays x_train, y_train, x_test, y_test
(default: mnist.npz in the data folder that ``tfprec.data.resolve_data_dir``
finds: $TFPREC_DATA_DIR, then ../shared/data next to the repository);
without one the file is downloaded with
``keras.datasets.mnist``.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from tfprec._tf import keras, tf  # first: selects Keras 2 for TFMOT
import tfprec
from tfprec.quantization import apply
from tfprec.quantization import validate

L = keras.layers
_DIR = tfprec.data.resolve_data_dir()
DEFAULT_DATA = os.path.join(_DIR, "mnist.npz") if _DIR else ""


def load_mnist(path):
    if path and os.path.exists(path):
        d = np.load(path)
        (xtr, ytr), (xte, yte) = (d["x_train"], d["y_train"]), (d["x_test"], d["y_test"])
    else:
        (xtr, ytr), (xte, yte) = keras.datasets.mnist.load_data()
    f = lambda x: x.reshape(len(x), 784).astype("float32") / 255.0
    return f(xtr), ytr.astype("int64"), f(xte), yte.astype("int64")


def clip_unit(w):
    """Keeps weights in [-1, 1] (METHOD.md section 5)."""
    return tf.clip_by_value(w, -1.0, 1.0)


def mlp(hidden, dropout):
    layers = [L.Input((784,))]
    for h in hidden:
        layers += [L.Dense(h, kernel_constraint=clip_unit, bias_constraint=clip_unit),
                   L.ReLU(max_value=2.0)]
        if dropout:
            layers.append(L.Dropout(dropout))
    layers.append(L.Dense(10, kernel_constraint=clip_unit, bias_constraint=clip_unit))
    return keras.Sequential(layers, name="mnist_mlp")


def accuracy(model, x, y):
    z = apply.logits_model(model).predict(x, batch_size=500, verbose=0)
    return float(np.mean(z.argmax(1) == y))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=DEFAULT_DATA, help="mnist .npz path")
    ap.add_argument("--hidden", default="512,512,512", help="hidden widths")
    ap.add_argument("--dropout", type=float, default=0.2)
    ap.add_argument("--epochs", type=int, default=3, help="float training epochs")
    ap.add_argument("--method", default="paper", choices=validate.METHODS)
    ap.add_argument("--level", type=int, default=2,
                    help="B_min (paper), B (uniform) or B_A (icml2017), bits")
    ap.add_argument("--finetune_epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=1e-4, help="fine-tuning rate")
    ap.add_argument("--calib", type=int, default=2000, help="gain examples")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    keras.utils.set_random_seed(args.seed)
    xtr, ytr, xte, yte = load_mnist(args.data)
    model = mlp([int(h) for h in args.hidden.split(",")], args.dropout)
    model.compile(keras.optimizers.Adam(1e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  ["accuracy"])
    t = time.time()
    model.fit(xtr, ytr, batch_size=128, epochs=args.epochs, verbose=2)
    print(f"float training: {time.time() - t:.1f} s")

    gains = tfprec.noise_gains(model, xtr[:args.calib])
    plan = validate.plan_at_level(gains, args.method, args.level)
    print(f"plan: {plan.method}, level {args.level}, bound {plan.bound():.3g}")
    for lp in plan.layers:
        print(f"  {lp.name:10s} B_W={lp.weight_bits:2d} (R_W={lp.weight_range:g})  "
              f"B_A={lp.act_bits:2d} (R_A={lp.act_range:g}, "
              f"{'signed' if lp.act_signed else 'unsigned'})")

    qmodel = apply.quantize_model(model, plan)
    float_acc = accuracy(model, xte, yte)
    before = accuracy(qmodel, xte, yte)
    qmodel.compile(keras.optimizers.Adam(args.lr),
                   keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                   ["accuracy"])
    t = time.time()
    qmodel.fit(xtr, ytr, batch_size=128, epochs=args.finetune_epochs, verbose=2)
    print(f"fine-tuning: {time.time() - t:.1f} s")
    after = accuracy(qmodel, xte, yte)

    # the fine-tuned model still computes on the plan's fixed-point grids
    for lp in plan.layers:
        for w in apply.quantized_weights(qmodel, lp.name):
            k = w / lp.weight_step
            assert np.array_equal(k, np.round(k)), lp.name

    print(f"test accuracy: float {100 * float_acc:.2f}%, fixed-point before "
          f"fine-tuning {100 * before:.2f}%, after {100 * after:.2f}%")
    return float_acc, before, after


if __name__ == "__main__":
    main()
