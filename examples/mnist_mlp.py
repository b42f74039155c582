"""Paper reproduction on MNIST: minimum per-layer precision at equal accuracy.

Sakr & Shanbhag, ICASSP 2018 (METHOD.md): trains the paper's MNIST MLP
784-512-512-512-10 (hidden activation clip(x, 0, 2), weights kept in
[-1, 1]; METHOD.md section 5) and, for each precision allocation

* the paper's per-layer rule (B_T = B_min + b_T),
* the cost-aware per-layer plan (minimum computational cost for a bound),
* uniform precision (one B for every tensor),
* the ICML 2017 rule (one B_A, one B_W),

finds the cheapest level at EQUAL ACCURACY: fake-quant test accuracy within
0.1 percentage point of float on held-out test data (``tfprec.calibrate``
with ``max_accuracy_drop=0.1``).  Reports each allocation's minimum precision, accuracy,
computational cost (1-bit full adders) and representational cost (bits),
next to a 16-bit fixed-point network of the same widths (accuracy measured)
and a binarized network in the style the paper compares with (B_A = B_W = 1,
every hidden layer ``--binarized_widen`` times wider, default 3: the paper's
binarized baselines are about 3x wider per hidden layer), which is priced by
the cost model only and NOT trained.  Prints the markdown table (and writes
it to ``--output``) with the ratios behind the paper's claims (up to 8 bits
lower minimum precision than uniform; ~3.5x lower cost than binarized; up to
14x lower than 16-bit).

Network: by default the committed well-trained MLP
(``examples/weights/mnist_mlp.h5``, made by ``examples/train_reference.py``:
30 epochs, dropout 0.2, +-2 pixel shifts, Adam with a cosine schedule; its
test accuracy is in ``examples/weights/README.md``); a missing file is an
error that names the command that makes it.  ``--retrain`` trains the short
CPU schedule instead (``--epochs`` epochs, default 3, on the 60000 MNIST
training images, batch 128, Adam lr 1e-3, seed 0, ``--dropout``, default 0;
~20 s, 97.6 %; cached in ``--cache_dir``).

Splits: gains on 2000 training images; every family's level is chosen on
the SELECTION split (test images 1-5000, ``--select_examples``) and every
reported number is measured on the REPORT split (test images 5001-10000,
``--eval_examples``).  All families are searched at one level per bit
(``paper_common``).  The whole run takes about 1 minute with the committed
weights.

    python examples/mnist_mlp.py --output mnist_results.md
    python examples/mnist_mlp.py --retrain --epochs 5
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402  (imports tfprec first)
import paper_common  # noqa: E402

from absl import app, flags  # noqa: E402

from tfprec.application import models  # noqa: E402
from tfprec.statistics.gains import layer_geometry  # noqa: E402

HIDDEN = (512, 512, 512)
SCHEDULE = ("{epochs} epochs on {n} training images, batch 128, Adam lr 1e-3, "
            "seed {seed}")

paper_common.define_paper_flags(epochs=3, calibration_examples=2000)
common.define_flag("float", "dropout", 0.0, "Dropout rate during training "
                   "(with --retrain).")
flags.adopt_module_key_flags(common)  # --help lists the shared flags
FLAGS = flags.FLAGS


def wide_geometry(hidden=HIDDEN, num_classes: int = 10):
    """geometry(widen) of the MLP with every hidden width x ``widen``."""
    def geo(widen: float):
        m = models.mnist_mlp(hidden=tuple(int(round(h * widen)) for h in hidden),
                             num_classes=num_classes, name="mnist_mlp_wide")
        return layer_geometry(m)
    return geo


def run(ds, *, hidden=HIDDEN, epochs: int = 3, cache_dir: str = "",
        calibration_examples: int = 2000, select_examples: int = 5000,
        eval_examples: int = 5000, binarized_widen: float = 3.0,
        max_accuracy_drop: float = 0.1, dropout: float = 0.0, seed: int = 0,
        methods=common.PAPER_METHODS, retrain: bool = False, weights_dir: str = "",
        log=common.log_to_stdout) -> paper_common.PaperResult:
    """The whole reproduction on dataset ``ds`` (flattened MNIST-like): the
    committed reference MLP, or with ``retrain`` the MLP of ``hidden``
    widths trained for ``epochs`` (``dropout`` during training only)."""
    hidden = tuple(int(h) for h in hidden)
    kw = {}
    if retrain and hidden != HIDDEN:
        kw["hidden"] = hidden
    if retrain and dropout:
        kw["dropout"] = float(dropout)
    if not retrain and hidden != HIDDEN:
        raise common.UnsupportedModelError(
            f"hidden={hidden}: the committed reference MLP has hidden widths "
            f"{HIDDEN}; pass retrain=True (--retrain) to train other widths")
    arch = "-".join(str(v) for v in (784, *hidden, ds.num_classes))
    return paper_common.run_paper(
        "mnist_mlp", ds, title=f"MNIST MLP {arch}", builder_kwargs=kw,
        wide_geometry=wide_geometry(hidden, ds.num_classes),
        widen=binarized_widen,
        widen_note=f"hidden widths {', '.join(str(int(round(h * binarized_widen))) for h in hidden)}",
        epochs=epochs, cache_dir=cache_dir, retrain=retrain, weights_dir=weights_dir,
        calibration_examples=calibration_examples, select_examples=select_examples,
        eval_examples=eval_examples,
        max_accuracy_drop=max_accuracy_drop, methods=methods, seed=seed,
        log=log,
        schedule=SCHEDULE.format(epochs=epochs, n=ds.num_train, seed=seed)
        + (f", dropout {dropout:g}" if dropout else ""))


def main(argv):
    del argv
    paper_common.paper_main("mnist_mlp", "mnist", run, flatten=True,
                            dropout=FLAGS.dropout)


if __name__ == "__main__":
    app.run(main)
