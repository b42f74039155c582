"""Layers whose state is not in their config, and operators a LiteRT kernel
family lacks.

* An adapted ``Normalization`` (``layer.adapt(data)``) keeps its mean and
  variance in non-trainable weights, not in ``get_config()``: every copy
  tfprec makes of it (the fake-quant and folded models, the export's float
  network, the float64 simulation) must carry them.  Checked against the
  user's own model and the float64 brute force of ``tests/reference.py``.
* LiteRT's reference kernels (BUILTIN_REF) have no ELU: an ELU model still
  exports, checked on the families that have it, and the report says which
  family was not run.
"""
import numpy as np
import pytest

import tfprec
from tfprec._tf import keras, tf
from tfprec.errors import UnsupportedModelError
from tfprec.export import runtime
from tfprec.export.aeq_report import AeqExportReport
from tfprec.export.running import tflite_predict
from tfprec.quantization.apply import fold_batchnorm, logits_model
from tfprec.statistics.layers import copy_weights

from reference import reference_gains

L = keras.layers


@pytest.fixture(scope="module")
def tabular():
    """Input(6) -> Normalization adapted to data of mean ~3, sd ~2 -> MLP,
    trained briefly on a rule of the normalized features; (model, x, y)."""
    keras.utils.set_random_seed(3)
    rng = np.random.default_rng(3)
    x = rng.normal(3.0, 2.0, (1200, 6)).astype("float32")
    z = (x - 3.0) / 2.0
    y = (z[:, 0] + z[:, 1] > 0).astype(int) + 2 * (z[:, 2] - z[:, 3] > 0).astype(int)
    norm = L.Normalization(name="norm")
    norm.adapt(x[:600])
    model = keras.Sequential([keras.Input((6,)), norm,
                              L.Dense(16, activation="relu", name="d1"),
                              L.Dense(16, activation="elu", name="d2"),
                              L.Dense(4, name="fc")])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x[:800], y[:800], epochs=8, batch_size=32, verbose=0)
    assert np.mean(np.argmax(model.predict(x[800:], verbose=0), -1) == y[800:]) > 0.8
    return model, x, y


def test_adapted_normalization_is_state_outside_the_config(tabular):
    model, _, _ = tabular
    # the premise: a copy from the config alone normalizes with mean 0, var 1
    norm = model.get_layer("norm")
    assert "mean" not in norm.get_config() or norm.get_config()["mean"] is None
    assert float(np.mean(norm.get_weights()[0])) == pytest.approx(3.0, abs=0.3)


def test_fake_quant_and_folded_copies_keep_the_adapted_statistics(tabular):
    model, x, _ = tabular
    want = model.predict(x[800:], verbose=0)
    np.testing.assert_allclose(fold_batchnorm(model).predict(x[800:], verbose=0), want,
                               rtol=1e-5, atol=1e-5)
    g = tfprec.noise_gains(model, x[:600])
    q = logits_model(tfprec.quantize_model(model, tfprec.uniform_plan(g, bits=16)))
    got = q.predict(x[800:], verbose=0)
    # 16-bit fixed point: steps of 2^-11 or finer on these ranges
    np.testing.assert_allclose(got, want, atol=0.02)
    assert np.array_equal(np.argmax(got, -1), np.argmax(want, -1))


def test_gains_and_float64_simulation_use_the_adapted_statistics(tabular):
    model, x, _ = tabular
    xs = x[:200]
    got = tfprec.noise_gains(model, xs, batch_size=64)
    ref = reference_gains(model, xs)
    assert got.num_ties == ref.num_ties
    for name, r in ref.layers.items():
        assert got[name].e_w == pytest.approx(r.e_w, rel=1e-4), name
        assert got[name].e_a == pytest.approx(r.e_a, rel=1e-4), name
    plan = tfprec.uniform_plan(got, bits=6)
    q = logits_model(tfprec.quantize_model(model, plan))
    sim = tfprec.simulate_logits(model, plan, x[800:1000])
    fq = q.predict(x[800:1000], verbose=0)
    # float64 numpy simulation vs the float32 fake-quant model: the same grid
    assert np.max(np.abs(sim - fq)) < 1e-3
    assert np.mean(np.argmax(sim, -1) == np.argmax(fq, -1)) == 1.0
    # and at 16 bits the simulation is the user's float model (its own
    # Normalization, adapted), not a copy normalizing with mean 0, var 1
    sim16 = tfprec.simulate_logits(model, tfprec.uniform_plan(got, bits=16), x[800:1000])
    np.testing.assert_allclose(sim16, model.predict(x[800:1000], verbose=0), atol=0.02)


def test_elu_model_exports_without_the_reference_kernels(tabular, tmp_path):
    model, x, y = tabular
    g = tfprec.noise_gains(model, x[:600])
    plan = tfprec.uniform_plan(g, bits=8)
    path = str(tmp_path / "tab.tflite")
    rep = tfprec.export.export_tflite(model, plan, path, x[800:1000], labels=y[800:1000])
    assert isinstance(rep, AeqExportReport)
    assert rep.unavailable_families == {"reference": "ELU"}
    assert "reference" not in rep.agreement_by_kernels
    assert set(rep.agreement_by_kernels) == {"xnnpack", "optimized"}
    assert any("no ELU operator" in n for n in rep.notes)
    assert "not run on: reference (no ELU operator)" in rep.to_markdown()
    # the file itself: LiteRT's decisions against the fake-quant model's,
    # and the fake-quant model against the float model (adapted statistics)
    got = np.argmax(tflite_predict(path, x[1000:]), -1)
    q = tfprec.quantize_model(model, plan)
    fq = np.argmax(q.predict(x[1000:], verbose=0), -1)
    assert np.mean(got == fq) == 1.0
    assert np.mean(fq == np.argmax(model.predict(x[1000:], verbose=0), -1)) > 0.95
    # the reference kernels really cannot load it
    with pytest.raises(Exception) as e:
        runtime.run_family(open(path, "rb").read(), x[:4], "reference")
    assert runtime.missing_op(e.value) == "ELU"


def test_elu_file_must_run_on_the_family_its_ties_are_tuned_for(tabular, tmp_path):
    model, x, _ = tabular
    plan = tfprec.uniform_plan(tfprec.noise_gains(model, x[:600]), bits=8)
    path = tmp_path / "tab.tflite"
    with pytest.raises(tfprec.ExportError, match="reference kernels"):
        tfprec.export.export_tflite(model, plan, str(path), x[800:900],
                                    backend="ai_edge_quantizer", kernels="reference")
    assert not path.exists()


def test_missing_op_reads_litert_messages_only():
    msg = ("Didn't find op for builtin opcode 'ELU' version '1'. An older version "
           "of this builtin might be supported.")
    assert runtime.missing_op(RuntimeError(msg)) == "ELU"
    assert runtime.missing_op(RuntimeError("Encountered unresolved custom op: Foo.")) == "Foo"
    assert runtime.missing_op(ValueError("Cannot set tensor: dimension mismatch")) is None


class _Offset(L.Layer):
    """A weightless-in-training layer with state: y = x + c, c a
    non-trainable weight set after construction (not in the config)."""

    def build(self, shape):
        self.c = self.add_weight(name="c", shape=(shape[-1],), initializer="zeros",
                                 trainable=False)

    def call(self, x):
        return x + self.c


class _Renamed(_Offset):
    def build(self, shape):
        self.c = self.add_weight(name="other", shape=(shape[-1],), initializer="zeros",
                                 trainable=False)


def test_non_trainable_state_of_a_custom_layer_is_copied():
    keras.utils.set_random_seed(0)
    i = keras.Input((5,))
    off = _Offset(name="offset")
    m = keras.Model(i, L.Dense(3, name="fc")(L.Dense(8, activation="relu", name="d")(off(i))))
    off.c.assign(np.linspace(-4.0, 4.0, 5))
    x = np.random.default_rng(0).normal(size=(300, 5)).astype("float32")
    with keras.utils.custom_object_scope({"_Offset": _Offset}):
        g = tfprec.noise_gains(m, x)
        q = logits_model(tfprec.quantize_model(m, tfprec.uniform_plan(g, bits=16)))
    np.testing.assert_allclose(q.predict(x, verbose=0), m.predict(x, verbose=0), atol=0.01)


def test_a_copy_missing_a_weight_is_refused_with_the_layer_named():
    src = _Offset(name="offset")
    src.build((None, 4))
    dst = _Renamed(name="copy")
    dst.build((None, 4))
    with pytest.raises(UnsupportedModelError, match="'offset'.*'c'"):
        copy_weights(src, dst)
    tf.debugging.assert_equal(dst.c, tf.zeros(4))
