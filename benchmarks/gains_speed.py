"""Speed and memory of the noise-gain pass, measured side by side in one run.

Network: the paper's CIFAR-10 VGG (METHOD.md section 5, clip(0, 2)
activations, BatchNormalization), random weights, random inputs of CIFAR
shape.  Every side runs at the SAME batch size and is timed by the SAME
rule: one warm-up call on one batch (tracing), then the median of 3 timed
runs.  Prints one line per side saying what it computes, then one
``name: value`` line per figure:

* gains_over_fit_epoch: gains-pass time over ``--examples`` examples / time
  of one model.fit epoch over the same examples.
* speedup_vs_jacobian_reference: seconds per example of a straightforward
  exact reference (eager, per-class ``tape.jacobian`` w.r.t. the weights,
  timed on ``--reference_examples`` examples, a multiple of the batch size,
  because it is slow) / tfprec's seconds per example; the same reference
  compiled with tf.function gives speedup_vs_compiled_jacobian_reference.
* peak_memory_over_fit: peak RSS of a process running only the gains pass /
  that of a process running only one fit epoch (same batch size).

The default batch is 16 because the jacobian reference vectorizes each
per-class jacobian over the batch (pfor): at batch 128 it needs more than
23 GB (OOM-killed on a 24 GB machine), at 16 about a few GB.

Usage:  python benchmarks/gains_speed.py [--batch_size 16] [--examples 1024]
            [--reference_examples 32]
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


REPEATS = 3


def median_time(run, warm_up) -> float:
    """The rule for every side: ``warm_up()`` once, then the median wall
    time of REPEATS calls of ``run()``, in seconds."""
    warm_up()
    times = []
    for _ in range(REPEATS):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def time_fit(model, x, y, bs):
    """Seconds of one model.fit epoch over x."""
    return median_time(
        lambda: model.fit(x, y, batch_size=bs, epochs=1, verbose=0),
        lambda: model.fit(x[:bs], y[:bs], batch_size=bs, epochs=1, verbose=0))


def time_gains(model, x, bs):
    """Seconds of tfprec.noise_gains over x."""
    return median_time(lambda: tfprec.noise_gains(model, x, batch_size=bs),
                       lambda: tfprec.noise_gains(model, x[:bs], batch_size=bs))


def reference_time_per_example(model, x, bs, compiled=False):
    """Seconds per example of a straightforward exact reference over x.

    What a user would write first: one persistent tape per batch and, for
    each class, a ``tape.jacobian`` of the margins with respect to every
    trainable weight (TF vectorizes each jacobian with pfor); eager, or the
    same function under tf.function with ``compiled``.
    """
    weights = model.trainable_weights

    def batch_terms(xb):
        with tf.GradientTape(persistent=True) as tape:
            z = model(xb, training=False)
            y = tf.argmax(z, axis=1)
            zy = tf.gather(z, y, batch_dims=1)
            diffs = [z[:, i] - zy for i in range(z.shape[1])]
        total = tf.zeros([tf.shape(xb)[0]])
        for d in diffs:
            jac = tape.jacobian(d, weights)
            sq = tf.add_n([tf.reduce_sum(tf.square(tf.reshape(j, [tf.shape(xb)[0], -1])), 1)
                           for j in jac])
            ok = tf.not_equal(d, 0.0)
            total += tf.where(ok, sq / tf.where(ok, tf.square(d), 1.0), 0.0)
        return total

    if compiled:
        batch_terms = tf.function(batch_terms)

    def run():
        for s in range(0, len(x), bs):
            batch_terms(x[s:s + bs])
    return median_time(run, lambda: batch_terms(x[:bs])) / len(x)


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
    ap.add_argument("--batch_size", type=int, default=16)
    ap.add_argument("--examples", type=int, default=1024)
    ap.add_argument("--reference_examples", type=int, default=32,
                    help="examples the slow references are timed on (rounded "
                         "up to a multiple of --batch_size)")
    ap.add_argument("--child", choices=["fit", "gains"])
    a = ap.parse_args()
    if a.child:
        child(a.child, a.examples, a.batch_size)
        return
    bs = a.batch_size
    n_ref = -(-a.reference_examples // bs) * bs
    print(f"rule: batch size {bs} on every side; one warm-up call on one batch, "
          f"then the median of {REPEATS} timed runs")
    print(f"tfprec: noise_gains, compiled forward + stacked backward over all "
          f"M-1 wrong classes, per-example weight-gradient norms from the layer "
          f"registry; {a.examples} examples")
    print(f"fit: model.fit, one epoch of Adam on sparse categorical "
          f"cross-entropy; {a.examples} examples")
    print(f"reference: eager per-class tape.jacobian w.r.t. the weights, "
          f"squared norms / squared margins; {n_ref} examples")
    print(f"compiled_reference: the same under tf.function; {n_ref} examples")
    print(f"memory: peak RSS (VmHWM) of a fresh process running only the gains "
          f"pass / only one fit epoch; {a.examples} examples")
    mem_gains = peak_rss("gains", a.examples, bs)
    mem_fit = peak_rss("fit", a.examples, bs)
    model, x, y = make(a.examples)
    t_gains = time_gains(model, x, bs)
    t_fit = time_fit(compiled(make(a.examples)[0]), x, y, bs)
    ref = reference_time_per_example(model, x[:n_ref], bs)
    ref_c = reference_time_per_example(model, x[:n_ref], bs, compiled=True)
    per_ex = t_gains / a.examples
    print(f"gains_pass_seconds: {t_gains:.3f}")
    print(f"fit_epoch_seconds: {t_fit:.3f}")
    print(f"gains_over_fit_epoch: {t_gains / t_fit:.2f}")
    print(f"tfprec_seconds_per_example: {per_ex:.5f}")
    print(f"fit_seconds_per_example: {t_fit / a.examples:.5f}")
    print(f"reference_seconds_per_example: {ref:.4f}")
    print(f"speedup_vs_jacobian_reference: {ref / per_ex:.1f}")
    print(f"compiled_reference_seconds_per_example: {ref_c:.4f}")
    print(f"speedup_vs_compiled_jacobian_reference: {ref_c / per_ex:.1f}")
    print(f"peak_rss_gains_mb: {mem_gains / 1024:.0f}")
    print(f"peak_rss_fit_mb: {mem_fit / 1024:.0f}")
    print(f"peak_memory_over_fit: {mem_gains / mem_fit:.2f}")


if __name__ == "__main__":
    main()
