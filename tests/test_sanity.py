"""Issue 12 part B: data and model sanity (tfprec.statistics.sanity, the data
part of tfprec.inputs), labels, datasets, softmax axis.  Tiny models, few
examples: every bad input gets a specific error or TfprecWarning."""
import warnings

import numpy as np
import pytest

import tfprec
from tfprec._tf import keras, tf
from tfprec.errors import (InvalidDataError, TfprecWarning,
                           UnsupportedModelError)
from tfprec.planning import calibrate as calibrate_lib
from tfprec.planning import rules
from tfprec.planning.evaluate import Evaluator
from tfprec.quantization import validate as validate_lib
from tfprec.statistics import sanity

L = keras.layers
N = 48


def _mlp(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([L.Input((8,)), L.Dense(4, activation="relu", name="fc1"),
                             L.Dense(3, name="fc2")])


@pytest.fixture(scope="module")
def mlp():
    m = _mlp()
    x = np.random.default_rng(0).normal(size=(N, 8)).astype("float32")
    fdec = np.argmax(m(x).numpy(), axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TfprecWarning)
        g = tfprec.noise_gains(m, x)
    return m, x, fdec, g, rules.uniform_plan(g, bits=8)


@pytest.fixture(scope="module")
def other():
    """Gains and a plan of another model: validate / calibrate given them
    raise PlanError after their data checks, before any fake-quant pass."""
    m = keras.Sequential([L.Input((8,)), L.Dense(5, name="o1"), L.Dense(3, name="o2")])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TfprecWarning)
        g = tfprec.noise_gains(m, np.ones((4, 8), "float32") * np.arange(4)[:, None])
    return g, rules.uniform_plan(g, bits=8)


@pytest.fixture(scope="module")
def cnn():
    keras.utils.set_random_seed(1)
    m = keras.Sequential([L.Input((6, 6, 1)), L.Conv2D(2, 3, activation="relu",
                                                       name="conv"),
                          L.Flatten(), L.Dense(3, name="out")])
    x = np.random.default_rng(1).integers(0, 256, size=(24, 6, 6, 1)).astype(np.uint8)
    return m, x


def _scale_warnings(record):
    return [str(w.message) for w in record if issubclass(w.category, TfprecWarning)
            and ("dtype" in str(w.message) or "range" in str(w.message)
                 or "codes" in str(w.message))]


# ------------------------------------------------------- 1. input scale
def test_uint8_images_warn_in_gains_validate_and_calibrate(cnn, other):
    m, x = cnn
    with pytest.warns(TfprecWarning, match=r"x \(calibration data\) has integer "
                      r"dtype uint8 with values in \[0, 25\d\]"):
        tfprec.noise_gains(m, x)
    with pytest.warns(TfprecWarning, match=r"x has integer dtype uint8.*x / 255"):
        with pytest.raises(tfprec.PlanError):     # stops before the fake-quant pass
            validate_lib.validate(m, other[1], x)
    with pytest.warns(TfprecWarning, match=r"x_val has integer dtype uint8"):
        with pytest.raises(tfprec.PlanError):     # stops before any search
            calibrate_lib.calibrate(m, other[0], x, target_mismatch=0.1)
    # The same images scaled to [0, 1]: no scale warning.
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        tfprec.noise_gains(m, x.astype("float32") / 255.0)
    assert _scale_warnings(rec) == []


def test_float_pixel_codes_and_huge_values_warn(mlp):
    m, x, *_ = mlp
    codes = np.round(np.abs(x) * 80).clip(0, 255).astype("float32")
    with pytest.warns(TfprecWarning, match=r"whole numbers in \[0, \d+\].*raw 8/16-bit"):
        tfprec.noise_gains(m, codes)
    with pytest.warns(TfprecWarning, match=r"x \(calibration data\) has values in "
                      r"\[-\d.*far outside the order-one range"):
        tfprec.noise_gains(m, x * 1e5)


def test_absurd_finite_values_raise_instead_of_nan_gains(mlp):
    m, x, *_ = mlp
    huge = x * np.float32(1e37)                  # finite in float32
    assert np.all(np.isfinite(huge))
    with pytest.raises(InvalidDataError, match=r"x \(calibration data\): examples "
                       r"0\.\.\d+ drive the input of layer '\w+' to .*overflows"):
        tfprec.noise_gains(m, huge)


def test_non_finite_gains_and_terms_are_named():
    with pytest.raises(InvalidDataError, match="layer 'b'.*not finite"):
        sanity.check_gains_finite(np.array([[1.0, 2.0, 3.0], [np.nan, 0.0, 1.0]]),
                                  ["a", "b"], "x")
    graph = tfprec.statistics.graph.parse_model(_mlp())
    out = {"amax": np.array([1.0, 1.0]), "amin": np.array([0.0, 0.0]),
           "pw": np.array([[1.0, np.inf, 1.0], [1.0, 1.0, 1.0]]), "pa": np.ones((2, 3))}
    with pytest.raises(InvalidDataError, match=r"x: example 11 gives non-finite"):
        sanity.check_pass_batch(out, graph, sanity.overflow_limits(graph, "float32"),
                                10, 3, "x")


# --------------------------------------------------- 2. degenerate models
@pytest.mark.parametrize("which,value", [(0, np.nan), (1, np.inf), (2, -np.inf)])
def test_non_finite_weights_name_the_layer(mlp, which, value):
    m = _mlp()
    ws = m.get_weights()
    ws[which].flat[0] = value
    m.set_weights(ws)
    layer = "fc1" if which < 2 else "fc2"
    part = "bias" if which == 1 else "kernel"
    with pytest.raises(UnsupportedModelError, match=rf"layer '{layer}'.*non-finite"
                       rf".*in its {part}"):
        tfprec.noise_gains(m, mlp[1])
    with pytest.raises(UnsupportedModelError, match=rf"layer '{layer}'"):
        validate_lib.validate(m, mlp[4], mlp[1])


def test_nan_batchnorm_statistics_name_the_layer(mlp):
    keras.utils.set_random_seed(0)
    m = keras.Sequential([L.Input((8,)), L.Dense(4), L.BatchNormalization(name="bn"),
                          L.Dense(3)])
    ws = m.get_weights()
    ws[-3][0] = np.nan                           # bn moving_variance
    m.set_weights(ws)
    assert np.isnan(m.get_layer("bn").moving_variance.numpy()[0])
    with pytest.raises(UnsupportedModelError, match=r"layer 'bn'.*non-finite"):
        tfprec.noise_gains(m, mlp[1])


def test_all_zero_weights_every_example_is_a_tie(mlp):
    m = _mlp()
    m.set_weights([np.zeros_like(w) for w in m.get_weights()])
    with pytest.raises(UnsupportedModelError, match=rf"every one of the {N} examples "
                       r"of x \(calibration data\) is a tie: all 3 logits are equal"):
        tfprec.noise_gains(m, mlp[1])


@pytest.mark.parametrize("head, warns", [
    ([L.Dense(5, activation="sigmoid", name="head")], "'head'"),
    ([L.Dense(5, name="fc"), L.Activation("sigmoid", name="sig")], "'sig'"),
    ([L.Dense(1, activation="sigmoid", name="one")], None),      # binary: analysed as such
    ([L.Dense(5, activation="softmax", name="soft")], None),
])
def test_sigmoid_head_over_several_outputs_warns_multi_label(head, warns):
    """A sigmoid over M >= 2 outputs is usually multi-label; tfprec
    analyses the argmax of the M scores, and says so, naming the layer."""
    keras.utils.set_random_seed(0)
    m = keras.Sequential([L.Input((8,)), L.Dense(6, activation="sigmoid"), *head])
    x = np.random.default_rng(4).normal(size=(sanity.MIN_EXAMPLES, 8)).astype("float32")
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        tfprec.noise_gains(m, x)
    hits = [str(w.message) for w in rec
            if w.category is TfprecWarning and "multi-label" in str(w.message)]
    if warns is None:
        assert hits == []
    else:
        assert len(hits) == 1 and warns in hits[0] and "argmax of the 5 scores" in hits[0]


def test_too_few_calibration_examples_warn(mlp):
    m = mlp[0]
    with pytest.warns(TfprecWarning, match=r"only 1 examples of x .*max_examples.*"
                      rf"at least {sanity.MIN_EXAMPLES}.*{sanity.RECOMMENDED_EXAMPLES}"):
        tfprec.noise_gains(m, mlp[1], max_examples=1)
    x = np.random.default_rng(2).normal(size=(sanity.MIN_EXAMPLES, 8)).astype("float32")
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        g = tfprec.noise_gains(m, x)
    assert g.num_examples == sanity.MIN_EXAMPLES
    assert not [w for w in rec if "examples of x" in str(w.message)]


# ------------------------------------------------------------- 3. labels
BAD_LABELS = {
    "out of range": (lambda y: y + 3, r"labels in \d\.\.\d+; the model has 3 classes"),
    "negative": (lambda y: y - 3, r"labels in -\d+\.\.-?\d; the model has 3 classes"),
    "non-integral": (lambda y: y + 0.5, r"integer class ids; got non-integral"),
    "one-hot width": (lambda y: np.eye(4)[y], r"one-hot rows of width 4, but the "
                      r"model has 3 classes"),
    "not one-hot": (lambda y: np.eye(3)[y] * 2, r"must be one-hot rows"),
    "row": (lambda y: y[None, :], rf"one row of {N} labels"),
    "3-d": (lambda y: y[:, None, None], rf"has shape \({N}, 1, 1\)"),
    "too short": (lambda y: y[:-1], rf"there are {N} examples"),
    "strings": (lambda y: y.astype(str), r"dtype <U\d+; labels must be integer"),
}


@pytest.mark.parametrize("case", sorted(BAD_LABELS))
@pytest.mark.parametrize("api", ["validate", "sweep", "calibrate"])
def test_bad_labels_raise_naming_the_argument(mlp, case, api):
    m, x, fdec, g, plan = mlp
    make, msg = BAD_LABELS[case]
    y = make(fdec)
    if api == "validate":
        call, name = lambda: validate_lib.validate(m, plan, x, y), "y"
    elif api == "sweep":
        call, name = lambda: validate_lib.sweep(m, g, x, y, b_mins=[8]), "y"
    else:
        call, name = (lambda: calibrate_lib.calibrate(m, g, x, y,
                                                      target_mismatch=0.1), "y_val")
    with pytest.raises(InvalidDataError, match=rf"^{name}\b.*{msg}|^{name}: .*{msg}"):
        call()


def test_label_column_equals_ids_and_shifted_labels_warn(mlp, other):
    m, x, fdec, g, plan = mlp
    col = tfprec.inputs.as_labels(fdec[:, None], N, 3)
    assert col.shape == (N,) and np.array_equal(col, fdec)         # not broadcast
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        ev = Evaluator(m, x, col)
    assert ev.float_accuracy == 1.0
    assert not [w for w in rec if "chance" in str(w.message)]
    shifted = (fdec + 1) % 3
    with pytest.warns(TfprecWarning, match=r"accuracy on y is 0\.0 % over 48 "
                      r"examples, not above chance \(1/M = 33\.3 %.*shifted"):
        with pytest.raises(tfprec.PlanError):
            validate_lib.validate(m, other[1], x, shifted)
    with pytest.warns(TfprecWarning, match=r"accuracy on y_val is 0\.0 %.*labels y_val"):
        Evaluator(m, x, shifted, what="x_val", label_what="y_val")


def test_one_decision_for_every_example_warns(mlp):
    m = _mlp()
    ws = m.get_weights()
    ws[-1] = np.array([0.0, 1e4, 0.0], "float32")     # fc2 bias: class 1 always
    m.set_weights(ws)
    with pytest.warns(TfprecWarning, match=r"every one of the 48 examples of x_val "
                      r"the same decision \(class 1 of 3\)"):
        Evaluator(m, mlp[1], what="x_val")
    assert sanity.check_decisions(np.array([0, 1, 2, 0]), None, 3) is None


# ------------------------------------------------------ 4. softmax axis
def test_softmax_over_a_non_class_axis_is_refused(mlp):
    for axis in (0, [0, 1]):
        m = keras.Sequential([L.Input((8,)), L.Dense(3), L.Softmax(axis=axis,
                                                                   name="smx")])
        with pytest.raises(UnsupportedModelError, match=r"layer 'smx'.*softmax over "
                           r"ax.*only a softmax over the last \(class\) axis"):
            tfprec.noise_gains(m, mlp[1])
        with pytest.raises(UnsupportedModelError, match="layer 'smx'"):
            tfprec.quantize_model(m, mlp[4])
    for axis in (-1, 1):
        m = keras.Sequential([L.Input((8,)), L.Dense(3), L.Softmax(axis=axis)])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TfprecWarning)
            assert tfprec.noise_gains(m, mlp[1]).dropped_softmax


# ------------------------------------------------------------ 5. datasets
def test_datasets_everywhere_and_max_examples(mlp):
    m, x, fdec, g, plan = mlp
    ds = tf.data.Dataset.from_tensor_slices((x, fdec))
    ex = lambda d, k=None: tfprec.inputs.as_examples(d, None, (8,), 3, max_examples=k)
    for d in (ds, ds.batch(7)):
        xa, ya = ex(d)
        assert np.array_equal(xa, x) and np.array_equal(ya, fdec)
    # max_examples counts examples, also for a batched (x, y) dataset
    xa, ya = ex(ds.batch(7), 10)
    assert len(xa) == len(ya) == 10 and np.array_equal(ya, fdec[:10])
    # an infinite dataset is accepted with max_examples
    xa, ya = ex(ds.repeat(), 60)
    assert len(xa) == 60 and np.array_equal(ya[N:], fdec[:60 - N])
    # unknown cardinality (filter) is read to its end
    unknown = ds.filter(lambda a, b: b >= 0)
    assert unknown.cardinality() == tf.data.UNKNOWN_CARDINALITY
    assert len(ex(unknown)[0]) == N
    # validate takes them (one fake-quant pass)
    r = validate_lib.validate(m, plan, ds.batch(7).repeat(), max_examples=30)
    assert r.num_examples == 30 and r.float_accuracy == 1.0


@pytest.mark.parametrize("api", ["noise_gains", "validate", "sweep", "calibrate"])
def test_infinite_dataset_is_refused_naming_the_argument(mlp, api):
    m, x, fdec, g, plan = mlp
    ds = tf.data.Dataset.from_tensor_slices((x, fdec)).repeat()
    calls = {
        "noise_gains": lambda: tfprec.noise_gains(m, ds),
        "validate": lambda: validate_lib.validate(m, plan, ds),
        "sweep": lambda: validate_lib.sweep(m, g, ds, b_mins=[8]),
        "calibrate": lambda: calibrate_lib.calibrate(m, g, ds, target_mismatch=0.1),
    }
    name = {"noise_gains": "calibration data", "calibrate": "x_val"}.get(api, "x")
    with pytest.raises(InvalidDataError, match=rf"^{name} is an infinite dataset.*"
                       r"max_examples.*take\(\)"):
        calls[api]()


def test_calibrate_reads_an_xy_dataset_before_its_plan_checks(mlp, other):
    m, x, fdec, *_ = mlp
    ds = tf.data.Dataset.from_tensor_slices((x, fdec)).batch(16).repeat()
    with pytest.raises(tfprec.PlanError):        # the data passed: gains are next
        calibrate_lib.calibrate(m, other[0], ds, target_mismatch=0.5, max_examples=40)


@pytest.mark.slow
def test_calibrate_and_sweep_run_on_an_xy_dataset(mlp):
    m, x, fdec, g, _ = mlp
    rows = validate_lib.sweep(m, g, tf.data.Dataset.from_tensor_slices((x, fdec)).batch(5),
                              b_mins=[8], methods=["uniform"])
    assert rows[0].num_examples == N and rows[0].float_accuracy == 1.0
    ds = tf.data.Dataset.from_tensor_slices((x, fdec)).batch(16)
    res = calibrate_lib.calibrate(m, g, ds, target_mismatch=0.5, methods=("uniform",),
                                  max_examples=40, max_bits=3)
    assert res.num_examples == 40 and res.float_accuracy == 1.0
