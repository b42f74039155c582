"""Argument checks of tfprec.quantization (quantize_model, the numpy
simulation, the fake-quant helpers and quantizers): every bad argument is a
tfprec error of a specific type whose message names the argument or layer,
raised before any model is built.

Every function that takes (model, plan) checks the plan with
``checked_plan``, so a plan for another model is refused by all of them in
the words of ``quantize_model``.  The models are tiny Dense chains; plans
come from tests/test_export.py's ``make_plan`` (independent of tfprec's
planners).
"""
from __future__ import annotations

import dataclasses
import types

import numpy as np
import pytest

from test_export import make_plan, sim_dense_chain
from tfprec._tf import keras, tf
from tfprec.errors import InvalidDataError, PlanError, UnsupportedModelError
from tfprec.export import export_tflite, simulate_plan
from tfprec.quantization import apply
from tfprec.quantization.quantizers import FixedPointQuantizer, fixed_point_quantize
from tfprec.quantization.simulate import (checked_plan, simulate_layer_inputs,
                                          simulate_logits)
from tfprec.statistics.gains import model_fingerprint

L = keras.layers
SPEC = {"a": (6, 6), "b": (5, 8)}


def mlp(hidden: int, seed: int):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([L.Input((6,)), L.Dense(hidden, activation="relu", name="a"),
                             L.Dense(3, name="b")])


@pytest.fixture(scope="module")
def small():
    """A 6-10-3 MLP, 32 inputs and a plan for it (a: 6/6 bits, b: 5/8)."""
    x = np.random.default_rng(3).normal(size=(32, 6)).astype(np.float32)
    m = mlp(10, 3)
    return m, x, make_plan(m, x, SPEC)


@pytest.fixture(scope="module")
def wider_plan(small):
    """A plan for a 6-12-3 MLP with the same layer names and classes."""
    _, x, _ = small
    return make_plan(mlp(12, 4), x, SPEC)


@pytest.fixture
def no_rebuild(monkeypatch):
    """Argument errors must come before quantize_model builds anything."""
    def rebuild(*a, **k):
        raise AssertionError("quantize_model started building before the check")
    monkeypatch.setattr(apply, "_rebuild", rebuild)


def sim(m, plan, x):
    return sim_dense_chain(m, plan, x, [("a", lambda t: np.maximum(t, 0)), ("b", None)])


def replace_layer(plan, name, **fields):
    return dataclasses.replace(plan, layers=tuple(
        dataclasses.replace(lp, **fields) if lp.name == name else lp
        for lp in plan.layers))


# every public function taking (model, plan), called on tiny inputs
CALLS = {
    "quantize_model": lambda m, p, x, **k: apply.quantize_model(m, p, **k),
    "simulate_logits": lambda m, p, x, **k: simulate_logits(m, p, x, **k),
    "simulate_layer_inputs": lambda m, p, x, **k: simulate_layer_inputs(m, p, x, **k),
    "simulate_plan": lambda m, p, x, **k: simulate_plan(m, p, x, **k),
    "export_tflite": lambda m, p, x, **k: export_tflite(m, p, "unused.tflite", x, **k),
}


# ------------------------------------------------------------- plan vs model
@pytest.mark.parametrize("fn", list(CALLS))
def test_plan_for_another_width_is_refused_in_the_same_words(small, wider_plan, fn,
                                                             no_rebuild, tmp_path,
                                                             monkeypatch):
    m, x, _ = small
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PlanError) as e:
        CALLS[fn](m, wider_plan, x)
    # the hidden layer has 6*12+12 weights in the plan's model, 6*10+10 here
    assert str(e.value) == (f"plan does not match model '{m.name}' at layer 'a': "
                            "num_weights is 84 in the plan but 70 in the model")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fn", list(CALLS))
def test_other_weights_need_allow_fingerprint_mismatch(small, fn, tmp_path, monkeypatch):
    m, x, plan = small
    monkeypatch.chdir(tmp_path)
    fp = dataclasses.replace(plan, fingerprint=model_fingerprint(m))
    other = keras.models.clone_model(m)
    other.set_weights([w * 0.5 for w in m.get_weights()])
    with pytest.raises(PlanError, match="other weights.*allow_fingerprint_mismatch=True"):
        CALLS[fn](other, fp, x[:4])
    with pytest.raises(PlanError, match="allow_fingerprint_mismatch must be .*'yes'"):
        CALLS[fn](other, fp, x[:4], allow_fingerprint_mismatch="yes")
    if fn in ("simulate_logits", "simulate_plan"):     # the cheap ones run
        z = CALLS[fn](other, fp, x, allow_fingerprint_mismatch=True)
        np.testing.assert_allclose(z, sim(other, plan, x), atol=1e-12)
        assert CALLS[fn](m, fp, x[:4]).shape == (4, 3)  # its own model: no flag
    elif fn == "simulate_layer_inputs":
        got = CALLS[fn](other, fp, x, allow_fingerprint_mismatch=True)
        assert sorted(got) == ["a", "b"]
    elif fn == "quantize_model":       # the check passes; building is tested elsewhere
        monkeypatch.setattr(apply, "_rebuild", lambda model, p, **k: ("built", model, p))
        assert CALLS[fn](other, fp, x, allow_fingerprint_mismatch=True) == (
            "built", other, fp)


# ----------------------------------------------------------------- bits
@pytest.mark.parametrize("value", [float("nan"), 4.5, 4.0, np.float32(6), True,
                                   np.bool_(False), None, "6", 1, 17, -3])
@pytest.mark.parametrize("field", ["weight_bits", "act_bits"])
def test_bad_bits_are_refused_naming_the_layer(small, field, value, no_rebuild):
    m, x, plan = small
    bad = replace_layer(plan, "b", **{field: value})
    for fn in ("quantize_model", "simulate_logits", "simulate_layer_inputs"):
        with pytest.raises(PlanError, match=rf"layer 'b': {field} must be an int number "
                                            rf"of bits in 2\.\.16, got"):
            CALLS[fn](m, bad, x)


def test_numpy_int_bits_are_accepted(small):
    m, x, plan = small
    ok = replace_layer(plan, "a", weight_bits=np.int64(6), act_bits=np.int32(6))
    np.testing.assert_array_equal(simulate_logits(m, ok, x), simulate_logits(m, plan, x))


# ------------------------------------------------------------ not a plan
@pytest.mark.parametrize("plan", [None, "plan.json", {"layers": ()}, 7, [],
                                  types.SimpleNamespace(layers=3)],
                         ids=["none", "str", "dict", "int", "list", "layers_int"])
@pytest.mark.parametrize("fn", ["quantize_model", "simulate_logits",
                                "simulate_layer_inputs"])
def test_non_plans_are_refused(small, fn, plan, no_rebuild):
    m, x, _ = small
    if fn == "simulate_logits" and plan is None:
        return                  # None is the documented float network there
    with pytest.raises(PlanError, match="plan must be a tfprec PrecisionPlan, got"):
        CALLS[fn](m, plan, x)


def test_plan_like_objects_are_checked_as_plans(small):
    m, x, plan = small
    fields = lambda lp: {f.name: getattr(lp, f.name)  # noqa: E731
                         for f in dataclasses.fields(lp)}
    duck = types.SimpleNamespace(layers=[types.SimpleNamespace(**fields(lp))
                                         for lp in plan.layers])
    np.testing.assert_array_equal(simulate_logits(m, duck, x), simulate_logits(m, plan, x))
    partial = types.SimpleNamespace(layers=[types.SimpleNamespace(
        **{k: v for k, v in fields(lp).items() if k != "g_a"}) for lp in plan.layers])
    with pytest.raises(PlanError, match=r"layer 0 \('a'\) has no field 'g_a'"):
        checked_plan(m, partial)


# ----------------------------------------------------------- bad models
def _keras3_model():
    import keras as keras3            # the Keras 3 package, not tf_keras
    return keras3.Sequential([keras3.layers.Input((6,)), keras3.layers.Dense(3)])


class _Sub(keras.Model):
    def __init__(self):
        super().__init__()
        self.d = L.Dense(3, name="b")

    def call(self, t):
        return self.d(t)


def _subclassed():
    s = _Sub()
    s(np.zeros((1, 6), np.float32))
    return s


@pytest.mark.parametrize("make,words", [
    (lambda: None, "tf_keras Model, got NoneType"),
    (_keras3_model, "tf_keras Model, got Sequential"),
    (_subclassed, "subclassed"),
    (lambda: "model.h5", "tf_keras Model, got str"),
], ids=["none", "keras3", "subclassed", "str"])
def test_models_tfprec_cannot_read_are_named(small, make, words, no_rebuild):
    _, x, plan = small
    bad = make()
    for fn in ("quantize_model", "simulate_logits", "simulate_layer_inputs"):
        with pytest.raises(UnsupportedModelError, match=words):
            CALLS[fn](bad, plan, x)
    with pytest.raises(UnsupportedModelError, match=words):
        simulate_logits(bad, None, x)
    with pytest.raises(UnsupportedModelError, match=words):
        apply.logits_model(bad)


def test_fold_batchnorm_refuses_what_it_cannot_read():
    with pytest.raises(UnsupportedModelError, match="got NoneType"):
        apply.fold_batchnorm(None)
    with pytest.raises(UnsupportedModelError, match="subclassed"):
        apply.fold_batchnorm(_subclassed())


def test_simulation_data_arguments(small):
    m, x, plan = small
    with pytest.raises(InvalidDataError, match=r"x has per-example shape \(5,\)"):
        simulate_logits(m, plan, x[:, :5])
    with pytest.raises(InvalidDataError, match="batch_size must be a positive int"):
        simulate_logits(m, plan, x, batch_size=0)
    with pytest.raises(InvalidDataError, match="x: example 1 contains NaN"):
        simulate_layer_inputs(m, plan, np.where(np.arange(32)[:, None] == 1, np.nan, x))


# ------------------------------------------------- fake-quant model helpers
def test_fake_quant_helpers_name_missing_layers(small):
    m, _, plan = small
    q = apply.quantize_model(m, plan)
    assert apply.weight_layer(q, "a").name == "quant_a"
    with pytest.raises(UnsupportedModelError, match=r"no input quantizer .* 'zz'"):
        apply.input_quantizer_layer(q, "zz")
    with pytest.raises(UnsupportedModelError,
                       match=r"no quantized weight layer named 'zz'.*\['a', 'b'\]"):
        apply.weight_layer(q, "zz")
    with pytest.raises(UnsupportedModelError, match="named 3"):
        apply.shadow_weights(q, 3)
    with pytest.raises(UnsupportedModelError, match="qmodel must be a tf_keras Model"):
        apply.quantized_weights(None, "a")
    with pytest.raises(UnsupportedModelError, match="qmodel must be a tf_keras Model"):
        apply.input_quantizer_layer(None, "a")


# ---------------------------------------------------------------- quantizers
@pytest.mark.parametrize("kwargs,words", [
    (dict(bits=float("nan")), "bits must be an int number of bits in 2..16, got nan"),
    (dict(bits=3.0), "bits must be an int number of bits in 2..16, got 3.0"),
    (dict(bits=True), "bits must be an int number of bits in 2..16, got True"),
    (dict(bits=1), "bits must be an int number of bits in 2..16, got 1"),
    (dict(range_scale=3.0), "range_scale must be a positive power of two, got 3.0"),
    (dict(range_scale=float("inf")), "range_scale must be a positive power of two"),
    (dict(signed="yes"), "signed='yes' must be a bool"),
])
def test_fixed_point_quantize_checks_its_format(kwargs, words):
    args = {"bits": 4, "range_scale": 1.0, "signed": True, **kwargs}
    with pytest.raises(PlanError, match=words):
        fixed_point_quantize(tf.constant([0.3]), **args)
    with pytest.raises(PlanError, match=words):
        FixedPointQuantizer(**args)


def test_fixed_point_quantize_needs_a_float_tensor():
    with pytest.raises(InvalidDataError, match="x must be a float tensor, got dtype int32"):
        fixed_point_quantize(tf.constant([1, 2]), 4, 1.0, True)
    with pytest.raises(InvalidDataError, match="x must be a float tensor"):
        fixed_point_quantize("abc", 4, 1.0, True)
    # numpy bools and ints are formats too
    out = fixed_point_quantize(tf.constant([0.3], tf.float64), np.int64(4), 1.0,
                               np.bool_(True))
    assert float(out[0]) == 0.25
