"""NoiseGainCallback: runs in fit, only reads the model, logs to TensorBoard."""
import glob

import numpy as np
import pytest

import tfprec
from tfprec._tf import keras, tf
from tfprec.errors import TfprecError

L = keras.layers


def _setup():
    keras.utils.set_random_seed(3)
    m = keras.Sequential([L.Input((8,)), L.Dense(16), L.BatchNormalization(),
                          L.ReLU(max_value=2.0), L.Dense(4, activation="softmax")])
    m.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 8)).astype("float32")
    y = (x[:, 0] > 0).astype(int) + 2 * (x[:, 1] > 0).astype(int)
    return m, x, y


def test_callback_in_fit_every_epoch_and_at_end(tmp_path):
    m, x, y = _setup()
    cb = tfprec.NoiseGainCallback(x[:40], every_n_epochs=2, log_dir=str(tmp_path),
                                  verbose=False, batch_size=16, method="paper")
    m.fit(x, y, epochs=4, batch_size=32, verbose=0, callbacks=[cb])
    assert [h.epoch for h in cb.history] == [1, 3]   # epoch 3 is also the end
    assert cb.plan is cb.history[-1].plan and cb.plan.bound() <= 0.01
    # The callback's gains are those of the trained model.
    ref = tfprec.noise_gains(m, x[:40])
    for a, b in zip(cb.gains.layers, ref.layers):
        assert a.e_w == pytest.approx(b.e_w, rel=1e-5)
        assert a.e_a == pytest.approx(b.e_a, rel=1e-5)
    events = glob.glob(str(tmp_path / "events.out.tfevents.*"))
    assert events
    tags = set()
    for e in tf.compat.v1.train.summary_iterator(events[0]):
        tags |= {v.tag for v in e.summary.value}
    name = cb.plan.layers[0].name
    assert {"tfprec/bound", f"tfprec/{name}/weight_bits",
            f"tfprec/{name}/log10_G_A"} <= tags


@pytest.mark.slow
def test_default_target_is_measured_on_held_out_half():
    """The default (issue 11): gains on the first half of the calibration
    inputs, the cheapest plan whose measured mismatch on the second half is
    <= target; recounted here with the fake-quant model."""
    from tfprec.quantization import validate
    m, x, y = _setup()
    m.fit(x, y, epochs=2, batch_size=32, verbose=0)
    cb = tfprec.NoiseGainCallback(x[:80], target=0.05, verbose=False)
    assert cb.method == "measured"
    cb.set_model(m)
    cb.on_train_end()
    ref = tfprec.noise_gains(m, x[:40])
    for a, b in zip(cb.gains.layers, ref.layers):
        assert a.e_w == pytest.approx(b.e_w, rel=1e-5)
    res = validate.validate(m, cb.plan, x[40:80])
    assert res.num_mismatch <= 0.05 * 40
    # the cheapest: the analytic paper plan at the same target is not cheaper
    assert cb.plan.cost().total_compute <= tfprec.paper_plan(ref, 0.05).cost().total_compute
    held = tfprec.NoiseGainCallback(x[:40], heldout_data=x[40:80], target=0.05,
                                    verbose=False)
    held.set_model(m)
    held.on_train_end()
    for a, b in zip(held.gains.layers, tfprec.noise_gains(m, x[:40]).layers):
        assert a.e_w == pytest.approx(b.e_w, rel=1e-5)
    with pytest.raises(TfprecError, match="heldout_data"):
        tfprec.NoiseGainCallback(x[:40], heldout_data=[1, 2])


def test_callback_only_reads_model():
    m, x, y = _setup()
    m.fit(x, y, epochs=1, batch_size=32, verbose=0)
    before_w = [w.copy() for w in m.get_weights()]
    before_opt = [v.numpy().copy() for v in m.optimizer.variables()]
    cb = tfprec.NoiseGainCallback(x[:40], verbose=False, method="paper")
    cb.set_model(m)
    cb.on_train_end()
    assert cb.gains is not None
    for a, b in zip(before_w, m.get_weights()):
        assert np.array_equal(a, b)
    for a, v in zip(before_opt, m.optimizer.variables()):
        assert np.array_equal(a, v.numpy())


def test_callback_per_channel():
    """per_channel=True reaches the gains pass: the callback's gains and
    plan are those of noise_gains(..., per_channel=True)."""
    m, x, _ = _setup()
    cb = tfprec.NoiseGainCallback(x[:40], verbose=False, method="paper",
                                  per_channel=True)
    entry = cb.run(m)
    want = tfprec.noise_gains(m, x[:40], per_channel=True)
    assert [l.r_w_channels for l in entry.gains.layers] == \
        [l.r_w_channels for l in want.layers]
    assert all(l.r_w_channels is not None for l in want.layers)
    assert [l.weight_channel_ranges for l in entry.plan.layers] == \
        [l.r_w_channels for l in want.layers]
    with pytest.raises(TfprecError, match="per_channel"):
        tfprec.NoiseGainCallback(x[:40], per_channel="yes")


def test_callback_bad_arguments():
    with pytest.raises(TfprecError, match="method"):
        tfprec.NoiseGainCallback(np.zeros((2, 8)), method="magic")
    with pytest.raises(TfprecError, match="every_n_epochs"):
        tfprec.NoiseGainCallback(np.zeros((2, 8)), every_n_epochs=0)
