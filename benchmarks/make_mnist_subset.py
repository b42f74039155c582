"""Builds tfprec/application/assets/mnist_subset.npz, the small MNIST subset shipped with tfprec.

The subset is a class-balanced (stratified) random selection from the official
MNIST split: 800 training images per digit (8000 in all) from the 60000
training images and 200 test images per digit (2000) from the 10000 test
images, uint8, stored with ``np.savez_compressed`` (about 1.6 MB).  The
selection is fixed by a seed, and the indices into the official split are
stored with the images (``train_index``, ``test_index``) for provenance.

Usage::

    python benchmarks/make_mnist_subset.py [--src DATA_DIR/mnist.npz]
        [--out tfprec/application/assets/mnist_subset.npz] [--train_per_class 800]
        [--test_per_class 200] [--seed 0]

--src defaults to mnist.npz in the data folder of
:func:`tfprec.application.data.resolve_data_dir` ($TFPREC_DATA_DIR, else
../shared/data next to the repository).  The source file must hold x_train (60000, 28, 28), y_train, x_test, y_test as
uint8 (the layout of keras.datasets.mnist's mnist.npz).
"""
from __future__ import annotations

import argparse
import hashlib
import os

import numpy as np

from tfprec.application.data import ENV_DATA_DIR, resolve_data_dir
from tfprec.fileio import atomic_write_with

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, os.pardir, "tfprec", "application", "assets", "mnist_subset.npz")


def stratified_indices(y: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """``per_class`` random indices of every class, in a seeded shuffled order."""
    picks = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        if len(idx) < per_class:
            raise SystemExit(f"class {c} has only {len(idx)} examples (< {per_class})")
        picks.append(np.sort(rng.choice(idx, size=per_class, replace=False)))
    out = np.concatenate(picks)
    rng.shuffle(out)
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--src", default=None,
                   help="MNIST .npz (default: mnist.npz in the data folder)")
    p.add_argument("--out", default=os.path.normpath(DEFAULT_OUT))
    p.add_argument("--train_per_class", type=int, default=800)
    p.add_argument("--test_per_class", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.src is None:
        d = resolve_data_dir()
        if d is None:
            raise SystemExit(f"no data folder: pass --src or set {ENV_DATA_DIR}")
        a.src = os.path.join(d, "mnist.npz")

    with np.load(a.src) as d:
        src = {k: d[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    for k, v in src.items():
        if v.dtype != np.uint8:
            raise SystemExit(f"{a.src}: {k} has dtype {v.dtype}, expected uint8")
    rng = np.random.default_rng(a.seed)
    tr = stratified_indices(src["y_train"], a.train_per_class, rng)
    te = stratified_indices(src["y_test"], a.test_per_class, rng)
    out = {
        "x_train": src["x_train"][tr], "y_train": src["y_train"][tr],
        "x_test": src["x_test"][te], "y_test": src["y_test"][te],
        "train_index": tr.astype(np.int32), "test_index": te.astype(np.int32),
    }
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    atomic_write_with(a.out, lambda tmp: np.savez_compressed(tmp, **out))
    with open(a.out, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    print(f"wrote {a.out}: {os.path.getsize(a.out)} bytes, sha256 {digest}")
    for k, v in out.items():
        print(f"  {k}: {v.shape} {v.dtype}")
    print("  train class counts:", np.bincount(out["y_train"]).tolist())
    print("  test class counts:", np.bincount(out["y_test"]).tolist())


if __name__ == "__main__":
    main()
