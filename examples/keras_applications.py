"""A tf_keras.applications classifier on CIFAR-10, end to end (issue 10).

``--application`` picks one of MobileNetV2 (default), MobileNetV3Small,
ResNet50 or DenseNet121, built with ``weights=None`` (nothing is
downloaded), 32x32x3 inputs, 10 classes and a logits output
(``tfprec.models.APPLICATIONS``), trained briefly on the CIFAR-10 copy
(``--train_examples`` images, ``--epochs`` epochs, Adam 1e-3, batch 128,
cached in ``--cache_dir``), then the same pipeline as the other
architecture examples (``common.run_architecture``): noise gains, the
paper's and the cost-aware plans at the analytic bound ``--target``, the
calibrated plans at a measured mismatch, every tensor at 8 bits;
fake-quant validation; TFLite export with its agreement check.

The keras.applications graphs use layers tfprec analyses through its generic
path (ZeroPadding2D, ``x + 3.0`` TFOpLambda nodes, hard-swish, Multiply
squeeze-excite gates, BatchNormalization before a convolution in
DenseNet121): ``benchmarks/coverage.py`` counts them per model.

CPU schedule (2 cores): MobileNetV2, 2 epochs on 10000 images: a few
minutes; ResNet50 and DenseNet121 take several times longer.

    python examples/keras_applications.py
    python examples/keras_applications.py --application densenet121 --epochs 1
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402  (imports tfprec first)

from absl import app, flags  # noqa: E402

from tfprec.application import models  # noqa: E402

common.define_architecture_flags(train_examples=10000)
flags.DEFINE_enum("application", "mobilenet_v2", sorted(models.APPLICATIONS),
                  "The tf_keras.applications classifier to build (weights=None).")
flags.adopt_module_key_flags(common)  # --help lists the shared flags
FLAGS = flags.FLAGS


def main(argv):
    del argv
    name = FLAGS.application
    run = common.architecture_runner(name, f"{name} (tf_keras.applications) / CIFAR-10")
    common.architecture_main(name, run)


if __name__ == "__main__":
    app.run(main)
