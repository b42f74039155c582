"""TFLite export of DepthwiseConv2D layers, checked against a numpy
depthwise convolution of the plan's fixed-point network and read back
through the LiteRT interpreter (helpers of tests/test_export.py)."""
from __future__ import annotations

import numpy as np
import pytest

from test_export import (RESOLVER, check_acts_on_grid, check_weights_on_grid, folded,
                         make_plan, read_back, sim_layer)
from tfprec._tf import keras
from tfprec.export import agreement, export_tflite, tflite_predict

L = keras.layers


def depthwise_same(a, k, b):
    """numpy 'SAME' stride-1 depthwise conv: NHWC x [kh, kw, C, M] -> C*M."""
    kh, kw, c, mult = k.shape
    ph, pw = (kh - 1) // 2, (kw - 1) // 2
    ap = np.pad(a, ((0, 0), (ph, kh - 1 - ph), (pw, kw - 1 - pw), (0, 0)))
    n, h, w = a.shape[:3]
    out = np.zeros((n, h, w, c, mult))
    for i in range(kh):
        for j in range(kw):
            out += ap[:, i:i + h, j:j + w, :, None] * k[i, j]
    return out.reshape(n, h, w, c * mult) + b


def sim(model, plan, x):
    y = np.clip(sim_layer(model, plan, "dw", x, depthwise_same), 0, 2)
    return sim_layer(model, plan, "d1", y.reshape(len(x), -1))


@pytest.fixture(scope="module")
def dw_model():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(200, 6, 6, 3)).astype(np.float32)
    keras.utils.set_random_seed(4)
    m = keras.Sequential([L.Input((6, 6, 3)),
                          L.DepthwiseConv2D(3, padding="same", depth_multiplier=2,
                                            name="dw"),
                          L.BatchNormalization(name="bn"), L.ReLU(max_value=2.0),
                          L.Flatten(), L.Dense(5, name="d1")])
    m.predict(x[:1], verbose=0)
    bn = m.get_layer("bn")   # a non-trivial BatchNorm to fold
    bn.set_weights([rng.uniform(0.5, 2, 6), rng.normal(0, 0.3, 6),
                    rng.normal(0, 0.2, 6), rng.uniform(0.5, 2, 6)])
    return m, x


@pytest.mark.parametrize("kernels", ["xnnpack", "reference", "optimized"])
@pytest.mark.parametrize("spec", [{"dw": (4, 8), "d1": (6, 5)},
                                  {"dw": (10, 6), "d1": (5, 9)}],
                         ids=["int8-dw", "float-dw"])
def test_depthwise_export_matches_numpy(dw_model, tmp_path, spec, kernels):
    m, x = dw_model
    plan = make_plan(m, x, spec)
    path = str(tmp_path / "dw.tflite")
    rep = export_tflite(m, plan, path, representative_data=x[:32], kernels=kernels)
    assert rep.grid_check_passed and rep.sim_agreement == 1.0
    dw = rep.layer("dw")
    if spec["dw"][0] <= 8:
        assert dw.compute == "int8" and dw.output.startswith("int8 on the input grid of d1")
    else:
        assert dw.compute == "float32"
    got = read_back(path, x[:16], ["dw", "d1"])
    for n in ("dw", "d1"):
        wd, w, ad, a, op_name = got[n]
        check_weights_on_grid(wd, w, plan.layer(n), folded(m, n)[0], op_name)
        check_acts_on_grid(ad, a, plan.layer(n))
    want = sim(m, plan, x)
    logits = tflite_predict(path, x, resolver=RESOLVER[kernels])
    assert agreement(want, logits) >= 0.995
    np.testing.assert_allclose(logits, want, atol=1e-4)
