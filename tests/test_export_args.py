"""Argument checks of tfprec.export: every bad argument is an ExportError
that names it, raised before anything is built or written (the ``no_build``
fixture makes lowering fail), and every form of representative data the
export takes checks the same examples.  Bad data and scalars are also
InvalidDataErrors, bad plans also PlanErrors in the words of
``quantize_model``, unreadable models also UnsupportedModelErrors.

The plan, the numpy simulation and the interpreter read-back come from
tests/test_export.py (independent of the exporter); nothing here is
compared with the exporter's own numbers alone.
"""
from __future__ import annotations

import ast
import dataclasses
import glob
import os
import stat
import types

import numpy as np
import pytest

from test_export import make_plan, sim_dense_chain, vars_of
from tfprec._tf import keras, tf
from tfprec.errors import ExportError, InvalidDataError, PlanError, UnsupportedModelError
from tfprec.export import agreement, export_tflite, simulate_plan, tflite_predict
from tfprec.export import running as running_mod
from tfprec.export import tflite as tflite_mod
from tfprec.quantization.apply import quantize_model
from tfprec.statistics.gains import model_fingerprint

L = keras.layers
SPEC = {"a": (6, 6), "b": (5, 8)}
RELU = ("a", lambda t: np.maximum(t, 0))


@pytest.fixture(scope="module")
def small():
    """An untrained 2-layer MLP, its data and a plan (a: 6/6 bits, b: 5/8)."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(64, 6)).astype(np.float32)
    keras.utils.set_random_seed(3)
    m = keras.Sequential([L.Input((6,)), L.Dense(10, activation="relu", name="a"),
                          L.Dense(3, name="b")])
    return m, x, make_plan(m, x, SPEC)


def sim(m, plan, x):
    return sim_dense_chain(m, plan, x, [RELU, ("b", None)])


def tflite_files(folder):
    return sorted(os.path.basename(p) for p in glob.glob(os.path.join(folder, "*")))


@pytest.fixture
def no_build(monkeypatch):
    """Makes any conversion work fail loudly: an argument error must come
    before the graph is lowered to TFLite operators."""
    def build(self, *a, **k):
        raise AssertionError("the export started building before the argument "
                             "check")
    monkeypatch.setattr(tflite_mod.Realizer, "build", build)


# ------------------------------------------------------------------ path
@pytest.mark.parametrize("path", [None, 3, b"x.tflite"])
def test_bad_path_is_named_before_anything_else(path):
    # model and plan are not even models: the path is checked first
    with pytest.raises(ExportError, match="path"):
        export_tflite(object(), object(), path)


def test_missing_folder_and_directory_are_named_and_nothing_is_written(small, tmp_path,
                                                                     no_build):
    m, x, plan = small
    with pytest.raises(ExportError, match="no_such_dir"):
        export_tflite(m, plan, str(tmp_path / "no_such_dir" / "m.tflite"),
                      representative_data=x)
    with pytest.raises(ExportError, match="directory"):
        export_tflite(m, plan, tmp_path, representative_data=x)
    assert tflite_files(tmp_path) == []


@pytest.mark.parametrize("path", ["", "out_dir" + os.sep])
def test_empty_path_and_folder_name_are_refused(path):
    with pytest.raises(ExportError, match="path"):
        export_tflite(object(), object(), path)


def test_unwritable_folder_is_named_before_anything_else(tmp_path, monkeypatch):
    # the tests may run as root, for whom every folder is writable: the
    # folder's permission is what os.access reports
    ro = tmp_path / "read_only"
    ro.mkdir()
    real_access = os.access
    monkeypatch.setattr(tflite_mod.os, "access", lambda p, mode: (
        False if os.path.abspath(p) == str(ro) else real_access(p, mode)))
    with pytest.raises(ExportError, match="read_only.*not writable"):
        export_tflite(object(), object(), str(ro / "m.tflite"))   # before the model
    assert os.listdir(ro) == []


def test_rewrite_is_atomic_and_keeps_the_file_mode(small, tmp_path):
    m, x, plan = small
    path = tmp_path / "m.tflite"
    path.write_bytes(b"old")
    os.chmod(path, 0o640)
    rep = export_tflite(m, plan, path, representative_data=x)   # a PathLike
    assert rep.path == str(path) and rep.file_size_bytes == path.stat().st_size > 3
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert tflite_files(tmp_path) == ["m.tflite"]               # no temp file left


# ------------------------------------------------------------ scalar args
@pytest.mark.parametrize("n", [-1, 2.5, True, "4", np.float64(3)])
def test_check_examples_must_be_a_nonnegative_int(small, tmp_path, n, no_build):
    m, x, plan = small
    with pytest.raises(InvalidDataError, match="check_examples") as e:
        export_tflite(m, plan, str(tmp_path / "m.tflite"), representative_data=x,
                      check_examples=n)
    assert isinstance(e.value, ExportError)
    assert tflite_files(tmp_path) == []


@pytest.mark.parametrize("strict", ["no", 0, None])
def test_strict_must_be_a_bool(small, tmp_path, strict, no_build):
    m, x, plan = small
    with pytest.raises(InvalidDataError, match=f"strict.*{strict!r}"):
        export_tflite(m, plan, str(tmp_path / "m.tflite"), representative_data=x,
                      strict=strict)


def test_check_examples_zero_checks_weights_only(small, tmp_path):
    m, x, plan = small
    path = str(tmp_path / "m.tflite")
    rep = export_tflite(m, plan, path, representative_data=x, check_examples=0)
    assert rep.check_examples == 0 and rep.grid_check_passed
    assert all(l.weights_grid_ok for l in rep.layers)
    assert np.isnan(rep.sim_agreement) and "check_examples=0" in rep.to_markdown()
    # the file itself is the one a checked export writes
    checked = str(tmp_path / "checked.tflite")
    export_tflite(m, plan, checked, representative_data=x)
    assert open(path, "rb").read() == open(checked, "rb").read()


@pytest.mark.parametrize("field,value", [("weight_bits", True), ("weight_bits", 3.5),
                                         ("act_bits", 17), ("act_bits", 1),
                                         ("act_bits", float("nan")), ("weight_bits", 4.0),
                                         ("weight_bits", np.bool_(True)),
                                         ("act_bits", None), ("act_bits", "4"),
                                         ("weight_range", 3.0), ("act_range", 0.0),
                                         ("weight_range", True)])
def test_bad_formats_name_the_layer_and_field(small, tmp_path, field, value, no_build):
    m, x, plan = small
    bad = types.SimpleNamespace(layers=tuple(
        types.SimpleNamespace(**{**vars_of(lp), field: value}) if lp.name == "b" else lp
        for lp in plan.layers))
    with pytest.raises(PlanError, match=f"'b'.*{field}") as e:
        export_tflite(m, bad, str(tmp_path / "m.tflite"), representative_data=x)
    assert isinstance(e.value, ExportError)
    # the same plan as a PrecisionPlan, and the same words as quantize_model
    real = dataclasses.replace(plan, layers=tuple(
        dataclasses.replace(lp, **{field: value}) if lp.name == "b" else lp
        for lp in plan.layers))
    with pytest.raises(PlanError) as e2:
        export_tflite(m, real, str(tmp_path / "m.tflite"), representative_data=x)
    with pytest.raises(PlanError) as e3:
        quantize_model(m, real)
    assert str(e2.value) == str(e3.value) == str(e.value)
    assert tflite_files(tmp_path) == []


# ------------------------------------------------------------------ plan
@pytest.fixture(scope="module")
def wider(small):
    """Same layer names and classes as ``small``, another hidden width, and a
    plan for it."""
    m, x, _ = small
    keras.utils.set_random_seed(4)
    w = keras.Sequential([L.Input((6,)), L.Dense(12, activation="relu", name="a"),
                          L.Dense(3, name="b")])
    return w, make_plan(w, x, SPEC)


@pytest.mark.parametrize("fn", ["export_tflite", "simulate_plan"])
def test_plan_for_another_width_is_refused_like_quantize_model(small, wider, tmp_path,
                                                               fn, no_build):
    m, x, _ = small
    _, plan_w = wider
    with pytest.raises(PlanError) as expected:
        quantize_model(m, plan_w)
    assert "does not match" in str(expected.value) and "'a'" in str(expected.value)
    with pytest.raises(PlanError) as e:
        if fn == "export_tflite":
            export_tflite(m, plan_w, str(tmp_path / "m.tflite"), representative_data=x)
        else:
            simulate_plan(m, plan_w, x)
    assert isinstance(e.value, ExportError)
    assert str(e.value) == str(expected.value)
    assert tflite_files(tmp_path) == []


@pytest.mark.parametrize("plan", [None, "plan.json", {"layers": []}, 3,
                                  types.SimpleNamespace(layers=[types.SimpleNamespace(
                                      name="a", weight_bits=4)])],
                         ids=["none", "str", "dict", "int", "missing_fields"])
def test_non_plans_are_refused(small, tmp_path, plan, no_build):
    m, x, _ = small
    with pytest.raises(PlanError, match="plan must be a tfprec PrecisionPlan"):
        export_tflite(m, plan, str(tmp_path / "m.tflite"), representative_data=x)


def test_plan_for_other_weights_needs_allow_fingerprint_mismatch(small, tmp_path):
    m, x, plan = small
    fp = dataclasses.replace(plan, fingerprint=model_fingerprint(m))
    other = keras.models.clone_model(m)
    other.set_weights([w * 0.5 for w in m.get_weights()])   # inside R_W still
    path = str(tmp_path / "m.tflite")
    with pytest.raises(PlanError, match="fingerprint.*allow_fingerprint_mismatch"):
        export_tflite(other, fp, path, representative_data=x)
    with pytest.raises(PlanError, match="allow_fingerprint_mismatch"):
        export_tflite(other, fp, path, representative_data=x,
                      allow_fingerprint_mismatch="yes")
    assert tflite_files(tmp_path) == []
    rep = export_tflite(other, fp, path, representative_data=x[:8],
                        allow_fingerprint_mismatch=True)
    assert rep.grid_check_passed
    np.testing.assert_allclose(tflite_predict(path, x), sim(other, plan, x), atol=1e-4)
    with pytest.raises(PlanError, match="fingerprint"):
        simulate_plan(other, fp, x)
    np.testing.assert_allclose(
        simulate_plan(other, fp, x, allow_fingerprint_mismatch=True),
        sim(other, plan, x), atol=1e-12)


@pytest.mark.parametrize("model", ["none", "keras3", "subclassed"])
def test_models_tfprec_cannot_read_are_named(small, tmp_path, model, no_build):
    m, x, plan = small
    if model == "none":
        bad, words = None, "NoneType"
    elif model == "keras3":
        import keras as keras3        # the Keras 3 package, not tf_keras
        bad = keras3.Sequential([keras3.layers.Input((6,)), keras3.layers.Dense(3)])
        words = "tf_keras"
    else:
        class Sub(keras.Model):
            def __init__(self):
                super().__init__()
                self.d = L.Dense(3, name="b")

            def call(self, t):
                return self.d(t)
        bad = Sub()
        bad(x[:1])
        words = "subclassed"
    with pytest.raises(UnsupportedModelError, match=words) as e:
        export_tflite(bad, plan, str(tmp_path / "m.tflite"), representative_data=x)
    assert isinstance(e.value, ExportError)


# ------------------------------------------------------ representative data
def _forms(x):
    """The same 64 examples as each form the export accepts."""
    pairs = tf.data.Dataset.from_tensor_slices((x, np.zeros(len(x), np.int64)))
    return {
        "array": x,
        "tensor": tf.constant(x),
        "dataset": tf.data.Dataset.from_tensor_slices(x),
        "pairs_batched": pairs.batch(5),
        "converter_callable": lambda: ([x[i:i + 1]] for i in range(len(x))),
        "list_of_examples": [x[i] for i in range(len(x))],
    }


@pytest.mark.parametrize("form", ["array", "tensor", "dataset", "pairs_batched",
                                  "converter_callable", "list_of_examples"])
def test_every_data_form_checks_the_first_examples(small, tmp_path, form):
    m, x, plan = small
    n = 23
    path = str(tmp_path / f"{form}.tflite")
    rep = export_tflite(m, plan, path, representative_data=_forms(x)[form],
                        check_examples=n)
    assert rep.check_examples == n and rep.check_source == "representative_data"
    # the report's logit differences are those of exactly x[:n], computed
    # here from interpreter runs and the numpy simulation (on 'optimized'
    # kernels, which round some ties off the plan, they depend on the examples)
    for fam, resolver in (("xnnpack", "auto"), ("reference", "ref"),
                          ("optimized", "builtin")):
        diff = np.max(np.abs(tflite_predict(path, x[:n], resolver=resolver)
                             - sim(m, plan, x[:n])))
        assert rep.max_logit_diff_by_kernels[fam] == pytest.approx(diff, abs=1e-12)


@pytest.mark.parametrize("data", [
    np.zeros((0, 6), np.float32), [], (lambda: iter(())),
    tf.data.Dataset.from_tensor_slices(np.zeros((0, 6), np.float32))],
    ids=["array", "list", "generator", "dataset"])
def test_empty_representative_data_is_named(small, tmp_path, data, no_build):
    m, _, plan = small
    with pytest.raises(InvalidDataError, match="representative_data.*empty") as e:
        export_tflite(m, plan, str(tmp_path / "m.tflite"), representative_data=data)
    assert isinstance(e.value, ExportError)
    assert tflite_files(tmp_path) == []


def _with_nan(x):
    bad = x.copy()
    bad[2, 1] = np.nan
    return bad


@pytest.mark.parametrize("make,words", [
    (lambda x: x[:, :5], r"representative_data has per-example shape \(5,\), but "
                         r"the model expects \(6,\)"),
    (lambda x: x[:, None, :], r"representative_data .*shape \(1, 6\).*expects \(6,\)"),
    (_with_nan, "representative_data: example 2 contains NaN"),
    (lambda x: np.where(np.arange(6) == 3, np.inf, x), "representative_data: example 0 "
                                                         "contains NaN or Inf"),
    (lambda x: [x[:2], x[:2, :5]], "representative_data item 1 .*shape"),
    (lambda x: x.astype(str), "representative_data must be a numeric array"),
    (lambda x: x.astype(complex), "representative_data must be a numeric array"),
    (lambda x: tf.data.Dataset.from_tensor_slices(x.astype(str)),
     "representative_data: dataset elements have dtype"),
    (lambda x: tf.data.Dataset.from_tensor_slices(x[:, :4]).batch(3),
     r"representative_data \(dataset batch\) has per-example shape \(4,\)"),
    (lambda x: 3.0, "representative_data must be an array"),
    (lambda x: {"x": x}, "representative_data must be an array"),
    (lambda x: (lambda: None), "representative_data must be an array"),
], ids=["narrow", "rank3", "nan", "inf", "item", "str", "complex", "ds_str", "ds_narrow",
        "float", "dict", "callable_none"])
def test_bad_representative_data_is_named_before_building(small, tmp_path, make, words,
                                                          no_build):
    m, x, plan = small
    with pytest.raises(InvalidDataError, match=words) as e:
        export_tflite(m, plan, str(tmp_path / "m.tflite"), representative_data=make(x))
    assert isinstance(e.value, ExportError)
    assert tflite_files(tmp_path) == []


# ------------------------------------------------ simulate_plan / predict
def test_simulate_plan_inputs(small):
    m, x, plan = small
    np.testing.assert_allclose(simulate_plan(m, plan, x[3]), sim(m, plan, x[3:4]),
                               atol=1e-12)
    with pytest.raises(InvalidDataError, match="x.*shape"):
        simulate_plan(m, plan, x[:, :4])
    with pytest.raises(InvalidDataError, match="x is empty"):
        simulate_plan(m, plan, x[:0])
    with pytest.raises(PlanError, match="plan must be a tfprec PrecisionPlan"):
        simulate_plan(m, None, x)


def test_tflite_predict_arguments(small, tmp_path):
    m, x, plan = small
    path = str(tmp_path / "m.tflite")
    export_tflite(m, plan, path, representative_data=x)
    assert tflite_predict(path, x[:0]).shape == (0,)
    np.testing.assert_allclose(tflite_predict(path, x, batch_size=5), sim(m, plan, x),
                               atol=1e-4)
    with pytest.raises(ExportError, match="batch_size"):
        tflite_predict(path, x, batch_size=0)
    with pytest.raises(ExportError, match="resolver"):
        tflite_predict(path, x, resolver="gpu")
    with pytest.raises(ExportError, match="missing.tflite.*does not exist"):
        tflite_predict(str(tmp_path / "missing.tflite"), x)
    with pytest.raises(ExportError, match="directory"):
        tflite_predict(str(tmp_path), x)
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"not a flatbuffer" * 8)
    with pytest.raises(ExportError, match="junk.tflite"):
        tflite_predict(str(junk), x)


@pytest.mark.parametrize("make,words", [
    (lambda x: x[:, :5], r"x has per-example shape \(5,\), but the model expects \(6,\)"),
    (lambda x: x[:, None], r"x has per-example shape \(1, 6\), but the model expects "
                           r"\(6,\)"),
    (lambda x: x[0], r"x has per-example shape \(\), but the model expects \(6,\)"),
    (lambda x: x[0, 0], r"x must be a numeric array; got dtype float32 and shape \(\)"),
    (lambda x: x.astype(str), "x must be a numeric array; got dtype <U"),
    (lambda x: None, "x is None"),
    (lambda x: x.tolist(), "x .*not a list"),
    (lambda x: _with_nan(x), "x: example 2 contains NaN"),
], ids=["narrow", "rank3", "one_example", "scalar", "str", "none", "list", "nan"])
def test_tflite_predict_checks_x_against_the_interpreter_input(small, tmp_path, make,
                                                               words, monkeypatch):
    m, x, plan = small
    path = str(tmp_path / "m.tflite")
    export_tflite(m, plan, path, representative_data=x[:4], check_examples=0)
    calls = []
    real = running_mod.interpreter

    def never(*args):
        raise AssertionError("x reached the interpreter before the input check")

    def spy(*a, **k):             # the interpreter loads, but is never fed
        it = real(*a, **k)
        calls.append(it)
        it.set_tensor = it.resize_tensor_input = never
        return it
    monkeypatch.setattr(running_mod, "interpreter", spy)
    with pytest.raises(InvalidDataError, match=words) as e:
        tflite_predict(path, make(x))
    assert isinstance(e.value, ExportError) and len(calls) == 1


def test_tflite_predict_refuses_a_model_without_float_input(tmp_path):
    from tfprec.export.flatbuffer import Builder
    b = Builder()
    xi = b.tensor("x", [6], np.int8, 0.5, 0)
    y = b.tensor("y", [6], np.float32)
    b.op(b.BO.DEQUANTIZE, [xi], [y])
    path = tmp_path / "int8_in.tflite"
    path.write_bytes(b.finish([xi], [y], "int8 input"))
    with pytest.raises(ExportError, match="int8_in.tflite.*int8 inputs"):
        tflite_predict(str(path), np.zeros((2, 6), np.float32))


def test_agreement_arguments(small, tmp_path):
    m, x, plan = small
    z = sim(m, plan, x)
    assert agreement(z, np.argmax(z, axis=-1)) == 1.0
    with pytest.raises(InvalidDataError, match="model_or_logits_a is a model; pass the "
                                               "inputs x"):
        agreement(m, z)
    with pytest.raises(InvalidDataError, match="logits_b .*tflite.*pass the inputs x"):
        agreement(z, str(tmp_path / "m.tflite"))
    with pytest.raises(InvalidDataError, match="64 decisions but logits_b gives 63"):
        agreement(z, z[1:])
    with pytest.raises(InvalidDataError, match="logits_b must be logits.*NoneType"):
        agreement(z, None)
    with pytest.raises(InvalidDataError, match="logits_b must be logits.*dtype <U"):
        agreement(z, z.astype(str))
    with pytest.raises(InvalidDataError, match=r"x has per-example shape \(5,\)"):
        agreement(m, z, x=x[:, :5])


def _dotted(node) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return ".".join([getattr(node, "id", "?")] + parts[::-1])


EXACT_WRITER = ("tflite.py", "checks.py", "flatbuffer.py", "lower.py", "formats.py",
                "report.py")


def test_export_uses_no_private_tensorflow_module():
    """No module of tfprec.export imports tensorflow.lite / tensorflow.core
    (private); the exact writer's modules do not use tf.lite.* at all (the
    LiteRT package serves both the schema and the interpreter; other export
    modules may call the public TFLite converter)."""
    import tfprec.export as pkg
    folder = os.path.dirname(pkg.__file__)
    names = [n for n in sorted(os.listdir(folder)) if n.endswith(".py")]
    assert set(EXACT_WRITER) <= set(names)
    for name in names:
        tree = ast.parse(open(os.path.join(folder, name)).read())
        used = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import)
                for a in n.names]
        used += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        used += [_dotted(n) for n in ast.walk(tree) if isinstance(n, ast.Attribute)]
        banned = ("tensorflow.lite", "tensorflow.core") + (
            ("tf.lite",) if name in EXACT_WRITER else ())
        bad = [u for u in used if u.startswith(banned)]
        assert bad == [], (name, bad)
    assert "ai_edge_litert" in open(os.path.join(folder, "checks.py")).read()
