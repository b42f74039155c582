"""Speed and memory of the noise-gain pass, measured side by side in one run.

Network: the paper's CIFAR-10 VGG (METHOD.md section 5, clip(0, 2)
activations, BatchNormalization), random weights, 1024 random inputs of
CIFAR shape.  Prints one ``name: value`` line per figure:

* gains_over_fit_epoch: gains-pass time over 1024 examples / time of one
  model.fit epoch over the same examples (same batch size, both warmed up).
* speedup_vs_jacobian_reference: time per example of a straightforward
  reference (eager, per-class tape.jacobian w.r.t. the weights, batch 16, on
  128 examples) / tfprec's time per example; also the same reference
  compiled with tf.function (speedup_vs_compiled_jacobian_reference).
* peak_memory_over_fit: peak RSS of a process running only the gains pass /
  that of a process running only one fit epoch (same batch size).

Usage:  python benchmarks/gains_speed.py [--batch_size 128] [--examples 1024]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np

import tfprec
from tfprec._tf import keras, tf
from tfprec.application.models import cifar10_vgg


def make(n: int, seed: int = 0):
    keras.utils.set_random_seed(seed)
    model = cifar10_vgg()
    # Non-trivial BN statistics so folding matters.
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            g, b, m, v = layer.get_weights()
            rng = np.random.default_rng(seed)
            layer.set_weights([1 + 0.1 * rng.standard_normal(g.shape), b,
                               0.1 * rng.standard_normal(m.shape),
                               1 + 0.1 * rng.random(v.shape)])
    x = np.random.default_rng(seed).random((n, 32, 32, 3), dtype=np.float32)
    y = np.random.default_rng(seed + 1).integers(0, 10, n)
    return model, x, y


def compiled(model):
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def time_fit(model, x, y, bs):
    model.fit(x, y, batch_size=bs, epochs=1, verbose=0)       # warm up
    t = time.perf_counter()
    model.fit(x, y, batch_size=bs, epochs=1, verbose=0)
    return time.perf_counter() - t


def time_gains(model, x, bs):
    tfprec.noise_gains(model, x[:bs], batch_size=bs)          # warm up (trace)
    t = time.perf_counter()
    tfprec.noise_gains(model, x, batch_size=bs)
    return time.perf_counter() - t


def reference_time_per_example(model, x, n=128, bs=16, compiled=False):
    """Straightforward exact reference: per-class jacobians w.r.t. weights.

    What a user would write first: eager mode, one persistent tape per batch
    of 16, and for each class a ``tape.jacobian`` of the margins with respect
    to every trainable weight (TF vectorizes each jacobian with pfor).
    """
    weights = model.trainable_weights

    def batch_terms(xb):  # eager; compiled=True wraps it in tf.function
        with tf.GradientTape(persistent=True) as tape:
            z = model(xb, training=False)
            y = tf.argmax(z, axis=1)
            zy = tf.gather(z, y, batch_dims=1)
            diffs = [z[:, i] - zy for i in range(z.shape[1])]
        total = tf.zeros([tf.shape(xb)[0]])
        for i, d in enumerate(diffs):
            jac = tape.jacobian(d, weights)
            sq = tf.add_n([tf.reduce_sum(tf.square(tf.reshape(j, [tf.shape(xb)[0], -1])), 1)
                           for j in jac])
            ok = tf.not_equal(d, 0.0)
            total += tf.where(ok, sq / tf.where(ok, tf.square(d), 1.0), 0.0)
        return total

    if compiled:
        batch_terms = tf.function(batch_terms)
    batch_terms(x[:bs])                                        # warm up
    t = time.perf_counter()
    for s in range(0, n, bs):
        batch_terms(x[s:s + bs])
    return (time.perf_counter() - t) / n


def child(mode: str, n: int, bs: int) -> None:
    model, x, y = make(n)
    if mode == "fit":
        compiled(model).fit(x, y, batch_size=bs, epochs=1, verbose=0)
    else:
        tfprec.noise_gains(model, x, batch_size=bs)
    # VmHWM (peak RSS of this process image): ru_maxrss would also count the
    # parent's RSS, which survives fork + exec.
    with open("/proc/self/status") as f:
        hwm = next(int(l.split()[1]) for l in f if l.startswith("VmHWM:"))
    print(json.dumps({"maxrss_kb": hwm}))


def peak_rss(mode: str, n: int, bs: int) -> float:
    out = subprocess.run([sys.executable, __file__, "--child", mode,
                          "--examples", str(n), "--batch_size", str(bs)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["maxrss_kb"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch_size", type=int, default=128)
    ap.add_argument("--examples", type=int, default=1024)
    ap.add_argument("--reference_examples", type=int, default=128)
    ap.add_argument("--child", choices=["fit", "gains"])
    a = ap.parse_args()
    if a.child:
        child(a.child, a.examples, a.batch_size)
        return
    mem_gains = peak_rss("gains", a.examples, a.batch_size)
    mem_fit = peak_rss("fit", a.examples, a.batch_size)
    model, x, y = make(a.examples)
    t_gains = time_gains(model, x, a.batch_size)
    t_fit = time_fit(compiled(make(a.examples)[0]), x, y, a.batch_size)
    t_gains2 = time_gains(model, x, a.batch_size)   # interleave: less drift
    t_gains = min(t_gains, t_gains2)
    ref = reference_time_per_example(model, x, a.reference_examples)
    ref_c = reference_time_per_example(model, x, a.reference_examples, compiled=True)
    print(f"gains_pass_seconds: {t_gains:.3f}")
    print(f"fit_epoch_seconds: {t_fit:.3f}")
    print(f"gains_over_fit_epoch: {t_gains / t_fit:.2f}")
    print(f"reference_seconds_per_example: {ref:.4f}")
    print(f"tfprec_seconds_per_example: {t_gains / a.examples:.5f}")
    print(f"speedup_vs_jacobian_reference: {ref / (t_gains / a.examples):.1f}")
    print(f"compiled_reference_seconds_per_example: {ref_c:.4f}")
    print(f"speedup_vs_compiled_jacobian_reference: {ref_c / (t_gains / a.examples):.1f}")
    print(f"peak_rss_gains_mb: {mem_gains / 1024:.0f}")
    print(f"peak_rss_fit_mb: {mem_fit / 1024:.0f}")
    print(f"peak_memory_over_fit: {mem_gains / mem_fit:.2f}")


if __name__ == "__main__":
    main()
