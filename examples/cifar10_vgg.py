"""Paper reproduction on CIFAR-10: minimum per-layer precision at equal accuracy.

Sakr & Shanbhag, ICASSP 2018 (METHOD.md): trains the paper's CIFAR-10
VGG-like network (valid 3x3 convolutions,
32C3-32C3-MP2-64C3-64C3-MP2-128C3-128C3-FC256-FC256-10, activation
clip(x, 0, 2), BatchNormalization folded into the weights after training;
METHOD.md section 5) and, for each precision allocation

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
every hidden layer -- each convolution's channels and each hidden FC --
``--binarized_widen`` times wider, default 3: the paper's binarized
baselines are about 3x wider per hidden layer), which is priced by the cost
model only and NOT trained.  Prints the markdown table (and writes it to
``--output``) with the ratios behind the paper's claims (up to 8 bits lower
minimum precision than uniform; ~3.5x lower cost than binarized; up to 14x
lower than 16-bit).

Network: by default the committed well-trained network
(``examples/weights/cifar10_vgg.h5``, made by ``examples/train_reference.py``:
40 epochs with BatchNormalization, crops and flips, SGD with a one-cycle
schedule, BN folded; ``tfprec.models.cifar10_vgg(batchnorm=False)``; its
test accuracy is in ``examples/weights/README.md``); a missing file is an
error that names the command that makes it.  ``--retrain`` trains the short
CPU schedule instead (``--epochs`` epochs, default 5, on the 50000 CIFAR-10
training images of the JPEG-75 copy, batch 128, Adam lr 1e-3, seed 0, no
augmentation, with BatchNormalization: 30-45 s per epoch, ~70 %; cached in
``--cache_dir``).

Splits: gains on 1000 training images; every family's level is chosen on
the SELECTION split (test images 1-5000, ``--select_examples``) and every
reported number is measured on the REPORT split (test images 5001-10000,
``--eval_examples``).  All families are searched at one level per bit
(``paper_common``).  The whole run takes a few minutes on 2 cores.

    python examples/cifar10_vgg.py --output cifar_results.md
    python examples/cifar10_vgg.py --retrain --epochs 10
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402  (imports tfprec first)
import paper_common  # noqa: E402

from absl import app, flags  # noqa: E402

from tfprec._tf import keras  # noqa: E402
from tfprec.statistics.gains import layer_geometry  # noqa: E402

L = keras.layers
SCHEDULE = ("{epochs} epochs on {n} training images, batch 128, Adam lr 1e-3, "
            "seed {seed}, no augmentation")

paper_common.define_paper_flags(epochs=5, calibration_examples=1000)
flags.adopt_module_key_flags(common)  # --help lists the shared flags
FLAGS = flags.FLAGS


def vgg_topology(widen: float = 1.0, input_shape=(32, 32, 3),
                 num_classes: int = 10) -> keras.Model:
    """The paper's VGG-like topology with every hidden layer ``widen`` times
    wider (channels 32/64/128 and FC 256 scaled; the output keeps
    ``num_classes``).  Untrained, with biases (what BN folding gives): used
    only for its cost-model geometry."""
    w = lambda c: int(round(c * widen))  # noqa: E731
    x = inp = keras.Input(shape=tuple(input_shape))
    for b, (filters, pool) in enumerate(((32, True), (64, True), (128, False)), start=1):
        for i in (1, 2):
            x = L.Conv2D(w(filters), 3, padding="valid", name=f"conv{b}_{i}")(x)
            x = L.ReLU(max_value=2.0)(x)
        if pool:
            x = L.MaxPooling2D(2)(x)
    x = L.Flatten()(x)
    for i in (1, 2):
        x = L.Dense(w(256), name=f"fc{i}")(x)
        x = L.ReLU(max_value=2.0)(x)
    out = L.Dense(int(num_classes), name="logits")(x)
    return keras.Model(inp, out, name="cifar10_vgg_wide")


def wide_geometry(widen: float):
    return layer_geometry(vgg_topology(widen))


def run(ds, *, epochs: int = 5, cache_dir: str = "", calibration_examples: int = 1000,
        select_examples: int = 5000, eval_examples: int = 5000,
        binarized_widen: float = 3.0, max_accuracy_drop: float = 0.1, seed: int = 0,
        methods=common.PAPER_METHODS, retrain: bool = False, weights_dir: str = "",
        log=common.log_to_stdout) -> paper_common.PaperResult:
    """The whole reproduction on dataset ``ds`` (CIFAR-10-like, 32x32x3)."""
    w = lambda c: int(round(c * binarized_widen))  # noqa: E731
    return paper_common.run_paper(
        "cifar10_vgg", ds,
        title="CIFAR-10 VGG 32C3-32C3-MP2-64C3-64C3-MP2-128C3-128C3-FC256-FC256-10",
        wide_geometry=wide_geometry, widen=binarized_widen,
        widen_note=(f"{w(32)}C3-{w(32)}C3-MP2-{w(64)}C3-{w(64)}C3-MP2-{w(128)}C3-"
                    f"{w(128)}C3-FC{w(256)}-FC{w(256)}-10"),
        epochs=epochs, cache_dir=cache_dir, retrain=retrain, weights_dir=weights_dir,
        calibration_examples=calibration_examples, select_examples=select_examples,
        eval_examples=eval_examples,
        max_accuracy_drop=max_accuracy_drop, methods=methods, seed=seed,
        log=log,
        schedule=SCHEDULE.format(epochs=epochs, n=ds.num_train, seed=seed))


def main(argv):
    del argv
    paper_common.paper_main("cifar10_vgg", "cifar10", run)


if __name__ == "__main__":
    app.run(main)
