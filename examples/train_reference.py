"""Trains the well-trained reference networks whose weights are committed.

The paper's claims cannot be judged on briefly trained networks, so tfprec
ships two reference networks, trained once with this script on the CPU:

* ``mnist_mlp``: the paper's MNIST MLP 784-512-512-512-10 (clip(x, 0, 2)
  activations, weights kept in [-1, 1]), dropout 0.2 during training only,
  random +-2 pixel shifts, Adam with a cosine learning-rate schedule
  (1e-3 -> 0), batch 128.
* ``cifar10_vgg``: the paper's CIFAR-10 VGG-like network
  (``tfprec.models.cifar10_vgg``) with BatchNormalization, trained with
  random crops (4-pixel reflect padding) and horizontal flips, SGD with
  Nesterov momentum 0.9, a one-cycle schedule (linear warm-up to 0.05 over
  2 epochs, cosine to 0), L2 weight decay 5e-4, batch 128; the
  BatchNormalization is then folded into the weights and the committed
  network has none (``cifar10_vgg(batchnorm=False)``).

Both use every training image of the dataset copy in ``../shared/data`` and
report the test accuracy only once, at the end (nothing is selected on the
test split).  The weights are written (atomically) to
``examples/weights/<name>.h5``; :func:`load_reference` in ``common`` loads
them.  Reproduce with

    python examples/train_reference.py --nets mnist_mlp,cifar10_vgg

(seed 0; run times and accuracies are printed and recorded in
``examples/weights/README.md``).
"""
from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import tfprec  # noqa: F401,E402  (first: selects Keras 2 before TensorFlow loads)

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from tfprec import fileio  # noqa: E402
from tfprec._tf import keras, tf  # noqa: E402
from tfprec.application import data as data_lib  # noqa: E402
from tfprec.application import models  # noqa: E402
from tfprec.quantization.apply import fold_batchnorm  # noqa: E402

WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")

flags.DEFINE_list("nets", ["mnist_mlp", "cifar10_vgg"], "Networks to train.")
flags.DEFINE_integer("mnist_epochs", 30, "Epochs for the MNIST MLP.")
flags.DEFINE_integer("cifar_epochs", 50, "Epochs for the CIFAR-10 network.")
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_string("data_dir", None, "Dataset folder (default: TFPREC_DATA_DIR, "
                    "then ../shared/data).")
flags.DEFINE_string("output_dir", WEIGHTS_DIR, "Where the .h5 files go.")
FLAGS = flags.FLAGS


def _cosine(peak: float, total: int, warmup: int = 0):
    def fn(step):
        step = tf.cast(step, tf.float32)
        warm = peak * (step + 1.0) / max(1, warmup)
        t = (step - warmup) / max(1, total - warmup)
        cos = 0.5 * peak * (1.0 + tf.cos(np.pi * tf.clip_by_value(t, 0.0, 1.0)))
        return tf.where(step < warmup, warm, cos)
    return fn


class _Schedule(keras.optimizers.schedules.LearningRateSchedule):
    def __init__(self, peak, total, warmup=0):
        self.peak, self.total, self.warmup = float(peak), int(total), int(warmup)
        self._fn = _cosine(self.peak, self.total, self.warmup)

    def __call__(self, step):
        return self._fn(step)

    def get_config(self):
        return {"peak": self.peak, "total": self.total, "warmup": self.warmup}


def train_mnist(ds, epochs: int, seed: int):
    keras.utils.set_random_seed(seed)
    model = models.mnist_mlp(dropout=0.2)
    steps = epochs * int(np.ceil(ds.num_train / 128))
    model.compile(optimizer=keras.optimizers.Adam(_Schedule(1e-3, steps)),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    x = ds.x_train.reshape(-1, 28, 28, 1)

    def aug(img, y):
        img = tf.image.pad_to_bounding_box(img, 2, 2, 32, 32)
        img = tf.image.random_crop(img, (28, 28, 1))
        return tf.reshape(img, (784,)), y

    tds = (tf.data.Dataset.from_tensor_slices((x, ds.y_train))
           .shuffle(60000, seed=seed).map(aug, num_parallel_calls=2)
           .batch(128).prefetch(2))
    model.fit(tds, epochs=epochs, verbose=2)
    clean = models.mnist_mlp(dropout=0.0)
    clean.set_weights(model.get_weights())
    return clean


def train_cifar(ds, epochs: int, seed: int):
    keras.utils.set_random_seed(seed)
    model = models.cifar10_vgg(batchnorm=True)
    reg = keras.regularizers.l2(5e-4)
    for layer in model.layers:
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            layer.kernel_regularizer = reg
    model = keras.Model.from_config(model.get_config())  # regularizers attach
    steps_per_epoch = int(np.ceil(ds.num_train / 128))
    sched = _Schedule(0.05, epochs * steps_per_epoch, 2 * steps_per_epoch)
    model.compile(optimizer=keras.optimizers.SGD(sched, momentum=0.9, nesterov=True),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])

    def aug(img, y):
        img = tf.pad(img, [[4, 4], [4, 4], [0, 0]], mode="REFLECT")
        img = tf.image.random_crop(img, (32, 32, 3))
        img = tf.image.random_flip_left_right(img)
        return img, y

    tds = (tf.data.Dataset.from_tensor_slices((ds.x_train, ds.y_train))
           .shuffle(50000, seed=seed).map(aug, num_parallel_calls=2)
           .batch(128).prefetch(2))
    model.fit(tds, epochs=epochs, verbose=2)
    folded = fold_batchnorm(model)
    clean = models.cifar10_vgg(batchnorm=False)
    for layer in clean.layers:
        if layer.weights:
            layer.set_weights(folded.get_layer(layer.name).get_weights())
    return clean


def main(argv):
    del argv
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    record_path = os.path.join(FLAGS.output_dir, "training.json")
    record = {}
    if os.path.isfile(record_path):
        with open(record_path) as f:
            record = json.load(f)
    for net in FLAGS.nets:
        t0 = time.time()
        if net == "mnist_mlp":
            ds = data_lib.load_dataset("mnist", FLAGS.data_dir, flatten=True)
            model = train_mnist(ds, FLAGS.mnist_epochs, FLAGS.seed)
            epochs = FLAGS.mnist_epochs
        elif net == "cifar10_vgg":
            ds = data_lib.load_dataset("cifar10", FLAGS.data_dir)
            model = train_cifar(ds, FLAGS.cifar_epochs, FLAGS.seed)
            epochs = FLAGS.cifar_epochs
        else:
            raise app.UsageError(f"--nets: unknown network {net!r}; use "
                                 "mnist_mlp or cifar10_vgg")
        seconds = time.time() - t0
        acc = models.accuracy(model, ds)
        path = os.path.join(FLAGS.output_dir, f"{net}.h5")
        fileio.atomic_write_with(
            path, lambda tmp: model.save_weights(tmp, save_format="h5"))
        record[net] = {"test_accuracy": round(acc, 4), "train_seconds": round(seconds),
                       "epochs": epochs, "seed": FLAGS.seed,
                       "command": "python examples/train_reference.py --nets " + net}
        print(f"{net}: test accuracy {100 * acc:.2f} % after {epochs} epochs, "
              f"{seconds:.0f} s -> {path}", flush=True)
        fileio.atomic_write_text(record_path, json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    app.run(main)
