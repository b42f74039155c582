"""keras.applications classifiers end to end (issue 10).

MobileNetV2, MobileNetV3Small, ResNet50 and DenseNet121 (tf_keras,
``weights=None``, 32x32x3, 10 classes; the weights and BN statistics are
redrawn by ``reference.randomize`` so that the untrained logits are not all
near zero; the checks below are about exactness of the pipeline, not
accuracy):

gains (every weight op finite and positive; the ops are the model's weight
layers, SeparableConv2D excepted) -> plan -> fake-quant model, whose logits
equal the float64 numpy/TF simulation of the plan (``simulate_logits``, an
independent implementation of the same fixed-point network) up to float32
rounding -> TFLite export and its decision agreement with the fake-quant
model.

All four run with ``-m slow`` (20-60 s each); the default suite covers the
same layer kinds in ``tests/test_generic_exact.py`` (MobileNetV3-style
squeeze-excite, DenseNet-style BN-ReLU-conv blocks, separable convs).
"""
from __future__ import annotations

import numpy as np
import pytest

import tfprec
from tfprec.application import models

from reference import randomize

N = 24


def _x(n=N, seed=0):
    return np.random.default_rng(seed).random((n, 32, 32, 3), dtype=np.float32)


CASES = [
    pytest.param("mobilenet_v2", {"alpha": 0.35}, marks=pytest.mark.slow),
    pytest.param("mobilenet_v3_small", {"alpha": 0.75}, marks=pytest.mark.slow),
    pytest.param("resnet50", {}, marks=pytest.mark.slow),
    pytest.param("densenet121", {}, marks=pytest.mark.slow),
]


@pytest.mark.parametrize("name, kw", CASES)
def test_application_end_to_end(name, kw, tmp_path):
    from tfprec._tf import keras
    keras.utils.set_random_seed(0)
    model = randomize(models.build(name, **kw), 0)
    before = [w.copy() for w in model.get_weights()]
    x = _x()
    gains = tfprec.noise_gains(model, x, batch_size=N)
    weight_layers = [l.name for l in model.layers if any(w.trainable for w in l.weights)]
    assert set(gains.names) <= set(weight_layers)
    folded = set(weight_layers) - set(gains.names)
    assert all(type(model.get_layer(n)).__name__ == "BatchNormalization" for n in folded)
    for l in gains.layers:
        assert np.isfinite(l.e_w) and l.e_w > 0, l.name
        assert np.isfinite(l.e_a) and l.e_a > 0, l.name

    plan = tfprec.uniform_plan(gains, bits=8)
    q = tfprec.quantize_model(model, plan)
    zq = tfprec.logits_model(q).predict(x, verbose=0).astype(np.float64)
    zs = tfprec.simulate_logits(model, plan, x)
    spread = float(np.median(zs.max(1) - zs.min(1)))
    # float32 fake quant vs float64 simulation: equal up to float32 rounding
    # and rare rounding-boundary flips, which add up over 50-120 layers
    assert np.median(np.abs(zq - zs)) <= 1e-2 * spread
    assert np.mean(zq.argmax(1) == zs.argmax(1)) >= 0.9
    # the user's model is not modified
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))

    # TFLite export (ai_edge_quantizer, the backend 'auto' picks for these
    # graphs): the file computes the fake-quant network on the family its
    # ties are tuned for (XNNPACK), so its decisions are the fake-quant
    # model's on every example
    from tfprec.export import export_tflite
    rep = export_tflite(model, plan, str(tmp_path / f"{name}.tflite"), x,
                        check_examples=N)
    assert rep.backend == "ai_edge_quantizer" and rep.grid_check_passed
    assert rep.agreement_by_kernels["xnnpack"] == 1.0
    assert rep.max_logit_diff_by_kernels["xnnpack"] <= 1e-4 * max(1.0, np.abs(zq).max())
    assert any(l.act_type in ("int8", "int16") for l in rep.layers)   # integer kernels
