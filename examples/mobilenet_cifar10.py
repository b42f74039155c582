"""A MobileNet-style depthwise-separable network on CIFAR-10, end to end.

Trains ``tfprec.models.mobilenet_like`` (3x3 stem, depthwise-separable
blocks: DepthwiseConv2D + BN + ReLU6, then 1x1 Conv2D + BN + ReLU6, and one
two-branch block whose branches -- ``b3a`` (depthwise-separable) and
``b3b`` (1x1 conv) -- read the same tensor and are joined by a
``Concatenate``) briefly on CIFAR-10, then:

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
5. the layers that read one shared input tensor (``act_group``): ``b3a_dw``
   and ``b3b`` both read the output of block ``b2``; a tensor is stored
   once, so both must have one format -- printed per plan and in the TFLite
   file.

The ``Concatenate`` needs no format of its own: formats belong to the inputs
of weight layers (METHOD.md section 1); the concatenation is the input of
``b4_dw``, whose one input format covers both branches.

CPU schedule (2 cores, no GPU): 2 epochs on the 50000 CIFAR-10 training
images (JPEG-75 copy), batch 128, Adam lr 1e-3, seed 0: 60-90 s, 51 % test
accuracy (after one epoch the test accuracy is still ~10 %: the
BatchNormalization moving statistics lag behind).  Cached in
``--cache_dir``.  Whole run: about 2 minutes (1 with cached weights).

    python examples/mobilenet_cifar10.py
    python examples/mobilenet_cifar10.py --epochs 10 --export_dir tflite_out
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402  (imports tfprec first)

from absl import app, flags  # noqa: E402


BUILDER = "mobilenet_like"
TITLE = "MobileNet-style network / CIFAR-10"

common.define_architecture_flags(train_examples=50000)
flags.adopt_module_key_flags(common)  # --help lists the shared flags
FLAGS = flags.FLAGS


run = common.architecture_runner(BUILDER, TITLE)


def main(argv):
    del argv
    common.architecture_main(BUILDER, run)


if __name__ == "__main__":
    app.run(main)
