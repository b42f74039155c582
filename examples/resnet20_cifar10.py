"""ResNet-20 on CIFAR-10, analyzed end to end with tfprec.

Trains the CIFAR ResNet-20 of ``tfprec.models.resnet20`` (3 stages x 3 basic
blocks, BatchNormalization after every conv, residual ``Add``s, 1x1
projection shortcuts in the first block of stages 2 and 3) briefly on
CIFAR-10, then:

1. noise gains on ``--calibration_examples`` training examples (BN folded);
2. plans: the paper's per-layer plan and the cost-aware (compute) plan at
   the analytic bound ``--target`` (raised to the bound of the all-16-bit
   plan if it is below it, then relaxed x10 while a rule finds no plan
   within 16 bits); every tensor at 8 bits (the usual int8 deployment, all
   int8 TFLite kernels); and, with ``--calibrated_mismatch`` (default
   0.01), the paper and cost-aware families at the cheapest level whose
   MEASURED float/fixed-point mismatch is at most that fraction
   (``tfprec.calibrate``), the level chosen on ``--select_examples`` test
   images that the validation below does not use;
3. fake-quant validation of each plan on the first ``--eval_examples`` test
   images: accuracy, measured float/fixed-point mismatch and the analytic
   bound;
4. TFLite export of each plan (``tfprec.export.export_tflite``): grid
   checks of every weight and input tensor, the TFLite model's accuracy and
   its decision agreement with the fake-quant Keras model
   (``tflite_predict`` / ``agreement``) and with the plan's simulation;
5. the layers that read one shared input tensor (``act_group``): the first
   block of stages 2 and 3 feeds the same tensor to ``_conv1`` and to the
   projection ``_proj``; a tensor is stored once, so both must have one
   format -- printed per plan and in the TFLite file.

The residual ``Add``s need no format of their own: formats belong to the
inputs of weight layers (METHOD.md section 1); an Add's output reaches the
next block's convs (and projection) through a ReLU as one shared tensor.

CPU schedule (2 cores, no GPU): 2 epochs on the first 20000 CIFAR-10
training images (JPEG-75 copy), batch 128, Adam lr 1e-3, seed 0: 55-85 s,
45 % test accuracy (a brief schedule, far from ResNet-20's ~91 %; the
analysis does not need a converged network).  Cached in ``--cache_dir``.
Whole run: about 2.5 minutes (about 1.5 with cached weights).

    python examples/resnet20_cifar10.py
    python examples/resnet20_cifar10.py --train_examples 50000 --epochs 10
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402  (imports tfprec first)

from absl import app, flags  # noqa: E402


BUILDER = "resnet20"
TITLE = "ResNet-20 / CIFAR-10"

common.define_architecture_flags(train_examples=20000)
flags.adopt_module_key_flags(common)  # --help lists the shared flags
FLAGS = flags.FLAGS


run = common.architecture_runner(BUILDER, TITLE)


def main(argv):
    del argv
    common.architecture_main(BUILDER, run)


if __name__ == "__main__":
    app.run(main)
