"""Many classes: the top-k + sketch estimator against the exact pass.

Network: a small CNN on 32x32x3 inputs with a 1000-class head (random
weights, random biases so margins differ), 512 random inputs.  The exact
pass needs 999 backward rows per example; the estimator takes the k closest
wrong classes exactly and the other 999 - k classes through s random-sign
projections.  Prints ``name: value`` lines:

* estimator_over_exact_time: estimator time / exact time (same batch size).
* bits_equal_fraction_<rule>: fraction of tensors (weights and activations
  of every layer, plans at targets 0.1, 0.01 and 0.001) whose bits in the
  plan made from the estimated gains equal those of the plan made from the
  exact gains (target >= 0.95), for the paper rule, ICML 2017, uniform and
  cost-aware plans.  The cost-aware plan is a knapsack optimum; near-ties
  between layers can flip with a 1% change of a gain.
* max_bits_difference: largest |difference| over all plans (target <= 1).
* max_gain_relative_error: largest relative error of a normalized gain.

Usage: python benchmarks/many_classes.py [--examples 512] [--top_k 32] [--sketch 32]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import tfprec
from tfprec._tf import keras

L = keras.layers


def model_1000(seed: int = 0):
    keras.utils.set_random_seed(seed)
    inp = L.Input((32, 32, 3))
    h = L.Conv2D(16, 3, strides=2, activation="relu")(inp)
    h = L.Conv2D(32, 3, activation="relu")(h)
    h = L.MaxPooling2D()(h)
    h = L.Conv2D(64, 3, activation="relu")(h)
    h = L.GlobalAveragePooling2D()(h)
    h = L.Dense(256)(h)
    h = L.ReLU(max_value=2.0)(h)
    out = L.Dense(1000, bias_initializer=keras.initializers.RandomNormal(0, 0.05))(h)
    return keras.Model(inp, out)


def bits(plan):
    return np.array([[l.weight_bits, l.act_bits] for l in plan.layers]).ravel()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=512)
    ap.add_argument("--batch_size", type=int, default=64)
    ap.add_argument("--top_k", type=int, default=32)
    ap.add_argument("--sketch", type=int, default=32)
    a = ap.parse_args()
    model = model_1000()
    x = np.random.default_rng(0).random((a.examples, 32, 32, 3), dtype=np.float32)
    kw = dict(batch_size=a.batch_size)
    est_kw = dict(top_k=a.top_k, sketch=a.sketch, **kw)
    tfprec.noise_gains(model, x[:a.batch_size], **kw)           # warm up both
    tfprec.noise_gains(model, x[:a.batch_size], **est_kw)
    t = time.perf_counter()
    exact = tfprec.noise_gains(model, x, **kw)
    t_exact = time.perf_counter() - t
    t = time.perf_counter()
    est = tfprec.noise_gains(model, x, **est_kw)
    t_est = time.perf_counter() - t
    rel = max(max(abs(e.g_w / x_.g_w - 1), abs(e.g_a / x_.g_a - 1))
              for e, x_ in zip(est.layers, exact.layers))
    print(f"classes: {exact.num_classes}")
    print(f"estimator: top_k={a.top_k} sketch={a.sketch}")
    print(f"exact_seconds: {t_exact:.2f}")
    print(f"estimator_seconds: {t_est:.2f}")
    print(f"estimator_over_exact_time: {t_est / t_exact:.3f}")
    print(f"max_gain_relative_error: {rel:.4f}")
    worst = 0
    for name in ("paper", "icml2017", "uniform", "cost_aware"):
        eq = []
        for target in (0.1, 0.01, 0.001):
            be = bits(tfprec.make_plan(est, name, target))
            bx = bits(tfprec.make_plan(exact, name, target))
            worst = max(worst, int(np.abs(be - bx).max()))
            eq.extend(be == bx)
        print(f"bits_equal_fraction_{name}: {np.mean(eq):.3f}")
    print(f"max_bits_difference: {worst}")


if __name__ == "__main__":
    main()
