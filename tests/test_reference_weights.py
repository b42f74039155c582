"""The committed well-trained reference networks (examples/weights).

* the weights load into their architecture (``examples/common.load_reference``)
  and reach the accuracy the issue requires on the first 2000 test images:
  >= 98.3 % for the MNIST MLP, >= 84 % for the CIFAR-10 VGG-like network;
* a missing weights file is an error naming the file and the command that
  makes it; an unknown network name is refused.

The data come from the shared folder (``shared_file``: skip without it
locally, fail under CI).  A missing weights file FAILS: they are committed.
"""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

import tfprec  # noqa: F401  (first: selects Keras 2)
from tfprec.application import data as data_lib
from tfprec.errors import TfprecError, UnsupportedModelError

from conftest import shared_file

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "examples")
sys.path.insert(0, EXAMPLES)

import common  # noqa: E402

N_TEST = 2000


def _accuracy(name: str, data_file: str) -> float:
    _, dataset, flatten = common.REFERENCE_NETS[name]
    ds = data_lib.load_dataset(dataset, os.path.dirname(shared_file(data_file)),
                               num_train=1, num_test=N_TEST, flatten=flatten)
    model = common.load_reference(name)
    logits = model.predict(ds.x_test, batch_size=500, verbose=0)
    return float(np.mean(np.argmax(logits, -1) == ds.y_test))


def test_mnist_mlp_reference_accuracy():
    acc = _accuracy("mnist_mlp", "mnist.npz")
    assert acc >= 0.983, f"MNIST MLP: {100 * acc:.2f} % on the first {N_TEST} test images"


@pytest.mark.slow      # ~10 s on 2 cores: a VGG pass over 2000 images
def test_cifar10_vgg_reference_accuracy():
    acc = _accuracy("cifar10_vgg", "cifar10_jpeg75.npz")
    assert acc >= 0.84, f"CIFAR-10 VGG: {100 * acc:.2f} % on the first {N_TEST} test images"


def test_mnist_mlp_file_matches_its_architecture():
    assert common.load_reference("mnist_mlp").count_params() == 932362


def test_cifar10_vgg_file_matches_its_architecture():
    """No BN in the CIFAR network: it was folded before saving."""
    m = common.load_reference("cifar10_vgg")
    assert not any("bn" in l.name for l in m.layers)
    assert [l.name for l in m.layers if l.weights][-1] == "logits"


def test_missing_weights_name_the_file_and_command(tmp_path):
    with pytest.raises(common.MissingWeightsError) as e:
        common.load_reference("mnist_mlp", str(tmp_path))
    msg = str(e.value)
    assert str(tmp_path / "mnist_mlp.h5") in msg
    assert "python examples/train_reference.py --nets mnist_mlp" in msg
    assert isinstance(e.value, TfprecError) and isinstance(e.value, FileNotFoundError)


def test_unknown_reference_network():
    with pytest.raises(UnsupportedModelError, match="'resnet20'.*mnist_mlp, cifar10_vgg"):
        common.load_reference("resnet20")


def test_retrain_off_refuses_other_architectures():
    """Without retrain, builder arguments cannot silently change the network
    the committed weights are for."""
    with pytest.raises(UnsupportedModelError, match="retrain"):
        common.reference_or_trained("mnist_mlp", None, retrain=False, epochs=1,
                                    builder_kwargs={"hidden": (32,)})
