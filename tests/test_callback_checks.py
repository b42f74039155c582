"""NoiseGainCallback checks everything it can before training (issue 12, 6):
arguments when made, the model, the calibration data and log_dir in
on_train_begin, so fit fails before its first epoch, not after a full run."""
import numpy as np
import pytest

import tfprec
from tfprec._tf import keras, tf
from tfprec.errors import (ExportError, InvalidDataError, PlanError,
                           UnsupportedModelError)

L = keras.layers


def _fit(model, cb, epochs=3):
    """fit with ``cb``; returns the epochs that began (before any error)."""
    began = []
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 8)).astype("float32")
    y = rng.integers(0, 3, 16)
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    seen = keras.callbacks.LambdaCallback(on_epoch_begin=lambda e, logs: began.append(e))
    try:
        model.fit(x, y, epochs=epochs, verbose=0, callbacks=[cb, seen])
    finally:
        _fit.began = began
    return began


def _mlp():
    keras.utils.set_random_seed(0)
    return keras.Sequential([L.Input((8,)), L.Dense(4, activation="relu"), L.Dense(3)])


X = np.random.default_rng(1).normal(size=(12, 8)).astype("float32")


def test_unsupported_model_fails_before_the_first_epoch():
    keras.utils.set_random_seed(0)
    m = keras.Sequential([L.Input((8,)), L.Reshape((2, 4)), L.LSTM(4, name="th"), L.Dense(3)])
    with pytest.raises(UnsupportedModelError, match=r"layer 'th'.*3 weight tensors"):
        _fit(m, tfprec.NoiseGainCallback(X, verbose=False))
    assert _fit.began == []


@pytest.mark.parametrize("data,match", [
    (np.zeros((12, 5), "float32"), r"calibration_data has per-example shape \(5,\), "
                                   r"but the model expects \(8,\)"),
    (np.zeros((0, 8), "float32"), r"calibration_data is empty"),
    (tf.data.Dataset.from_tensor_slices(X).repeat(),
     r"calibration_data is an infinite dataset.*max_examples"),
    (tf.data.Dataset.from_tensor_slices(np.zeros((4, 3), "float32")).batch(2),
     r"calibration_data \(dataset batch\) has per-example shape \(3,\)"),
    (tf.data.Dataset.from_tensor_slices(np.array(["a", "b"])),
     r"calibration_data: dataset elements have dtype string"),
])
def test_bad_calibration_data_fails_before_the_first_epoch(data, match):
    with pytest.raises(InvalidDataError, match=match):
        _fit(_mlp(), tfprec.NoiseGainCallback(data, verbose=False))
    assert _fit.began == []


def test_bad_arguments_fail_when_the_callback_is_made(tmp_path):
    with pytest.raises(PlanError, match=r"target must be a probability in \(0, 1\], "
                       r"got 1\.5"):
        tfprec.NoiseGainCallback(X, target=1.5)
    with pytest.raises(PlanError, match=r"cost must be one of \('compute', "
                       r"'memory'\), got 'time'"):
        tfprec.NoiseGainCallback(X, cost="time")
    for bad in (None, [X, "x"], [], "data"):    # (a list of arrays: several inputs)
        with pytest.raises(InvalidDataError, match="calibration_data must be a numpy "
                           "array"):
            tfprec.NoiseGainCallback(bad)


def test_unwritable_log_dir_fails_before_training(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(ExportError, match=r"log_dir '.*a_file.*logs' cannot be "
                       r"created: .*a_file' is not a folder"):
        tfprec.NoiseGainCallback(X, log_dir=str(blocker / "logs"))
    # made fine, then the path is blocked before fit: refused in on_train_begin
    later = tmp_path / "later"
    cb = tfprec.NoiseGainCallback(X, log_dir=str(later / "logs"), verbose=False)
    later.write_text("now a file")
    with pytest.raises(ExportError, match=r"log_dir '.*later.*logs'"):
        _fit(_mlp(), cb)
    assert _fit.began == []


def test_good_callback_still_runs_and_creates_log_dir(tmp_path):
    log_dir = tmp_path / "new" / "logs"
    cb = tfprec.NoiseGainCallback(X, log_dir=str(log_dir), verbose=False, method="paper")
    assert _fit(_mlp(), cb, epochs=1) == [0]
    assert log_dir.is_dir() and cb.plan is not None


@pytest.mark.parametrize("heldout,match", [
    (np.zeros((12, 5), "float32"), r"heldout_data has per-example shape \(5,\), "
                                   r"but the model expects \(8,\)"),
    ((np.zeros((12, 5), "float32"), np.zeros(12)),
     r"heldout_data has per-example shape \(5,\)"),
    (np.zeros((0, 8), "float32"), r"heldout_data is empty"),
])
def test_bad_heldout_data_fails_before_the_first_epoch(heldout, match):
    """Held-out data used to be read only after the last epoch (and named
    x_val, calibrate's argument): now checked, and named, before the first."""
    with pytest.raises(InvalidDataError, match=match):
        _fit(_mlp(), tfprec.NoiseGainCallback(X, heldout_data=heldout, verbose=False))
    assert _fit.began == []


@pytest.mark.slow   # default-suite time (< 5 min): three fits with measured plans
def test_keras_validation_data_form_is_accepted_for_one_input():
    """(x_val, y_val), Keras' validation_data form, for a one-input model:
    the labels are not used; the plan equals the one from x_val alone (and
    (x, y) calibration data likewise)."""
    rng = np.random.default_rng(2)
    xv = rng.normal(size=(64, 8)).astype("float32")
    yv = rng.integers(0, 3, 64)
    plans = []
    for calib, held in ((X, xv), ((X, np.zeros(len(X))), (xv, yv)),
                        (X, (xv, yv, np.ones(64)))):
        cb = tfprec.NoiseGainCallback(calib, heldout_data=held, target=0.05, verbose=False)
        assert _fit(_mlp(), cb, epochs=1) == [0]
        plans.append([(l.weight_bits, l.act_bits) for l in cb.plan.layers])
    assert plans[0] == plans[1] == plans[2]
