"""Argument checks of tfprec.export: every bad argument is an ExportError
that names it, raised before anything is built or written, and every form of
representative data the export takes checks the same examples.

The plan, the numpy simulation and the interpreter read-back come from
tests/test_export.py (independent of the exporter); nothing here is
compared with the exporter's own numbers alone.
"""
from __future__ import annotations

import ast
import glob
import os
import stat
import types

import numpy as np
import pytest

from test_export import make_plan, sim_dense_chain, vars_of
from tfprec._tf import keras, tf
from tfprec.errors import ExportError
from tfprec.export import export_tflite, simulate_plan, tflite_predict

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


# ------------------------------------------------------------------ path
@pytest.mark.parametrize("path", [None, 3, b"x.tflite"])
def test_bad_path_is_named_before_anything_else(path):
    # model and plan are not even models: the path is checked first
    with pytest.raises(ExportError, match="path"):
        export_tflite(object(), object(), path)


def test_missing_folder_and_directory_are_named_and_nothing_is_written(small, tmp_path):
    m, x, plan = small
    with pytest.raises(ExportError, match="no_such_dir"):
        export_tflite(m, plan, str(tmp_path / "no_such_dir" / "m.tflite"),
                      representative_data=x)
    with pytest.raises(ExportError, match="directory"):
        export_tflite(m, plan, tmp_path, representative_data=x)
    assert tflite_files(tmp_path) == []


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
@pytest.mark.parametrize("n", [-1, 2.5, True, "4", None])
def test_check_examples_must_be_a_nonnegative_int(small, tmp_path, n):
    m, x, plan = small
    with pytest.raises(ExportError, match="check_examples"):
        export_tflite(m, plan, str(tmp_path / "m.tflite"), representative_data=x,
                      check_examples=n)
    assert tflite_files(tmp_path) == []


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
                                         ("weight_range", 3.0), ("act_range", 0.0),
                                         ("weight_range", True)])
def test_bad_formats_name_the_layer_and_field(small, tmp_path, field, value):
    m, x, plan = small
    bad = types.SimpleNamespace(layers=tuple(
        types.SimpleNamespace(**{**vars_of(lp), field: value}) if lp.name == "b" else lp
        for lp in plan.layers))
    with pytest.raises(ExportError, match=f"'b'.*{field}"):
        export_tflite(m, bad, str(tmp_path / "m.tflite"), representative_data=x)


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
def test_empty_representative_data_is_named(small, tmp_path, data):
    m, _, plan = small
    with pytest.raises(ExportError, match="representative_data.*empty"):
        export_tflite(m, plan, str(tmp_path / "m.tflite"), representative_data=data)
    assert tflite_files(tmp_path) == []


def test_bad_representative_data_is_named(small, tmp_path):
    m, x, plan = small
    path = str(tmp_path / "m.tflite")
    with pytest.raises(ExportError, match="representative_data.*shape"):
        export_tflite(m, plan, path, representative_data=x[:, :5])
    bad = x.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ExportError, match="representative_data.*example 2.*NaN"):
        export_tflite(m, plan, path, representative_data=bad)
    with pytest.raises(ExportError, match="representative_data item 1"):
        export_tflite(m, plan, path, representative_data=[x[:2], x[:2, :5]])
    with pytest.raises(ExportError, match="representative_data"):
        export_tflite(m, plan, path, representative_data=3.0)
    assert tflite_files(tmp_path) == []


# ------------------------------------------------ simulate_plan / predict
def test_simulate_plan_inputs(small):
    m, x, plan = small
    np.testing.assert_allclose(simulate_plan(m, plan, x[3]), sim(m, plan, x[3:4]),
                               atol=1e-12)
    with pytest.raises(ExportError, match="x.*shape"):
        simulate_plan(m, plan, x[:, :4])
    with pytest.raises(ExportError, match="x is empty"):
        simulate_plan(m, plan, x[:0])


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
    with pytest.raises(ExportError, match="x.*shape"):
        tflite_predict(path, x[:, :5])
    with pytest.raises(ExportError, match="missing.tflite"):
        tflite_predict(str(tmp_path / "missing.tflite"), x)


def _dotted(node) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return ".".join([getattr(node, "id", "?")] + parts[::-1])


def test_export_uses_no_private_tensorflow_module():
    """No import of tensorflow.lite / tensorflow.core and no tf.lite.* use
    (the LiteRT package serves both the schema and the interpreter)."""
    import tfprec.export as pkg
    folder = os.path.dirname(pkg.__file__)
    names = [n for n in sorted(os.listdir(folder)) if n.endswith(".py")]
    assert {"tflite.py", "checks.py", "flatbuffer.py"} <= set(names)
    for name in names:
        tree = ast.parse(open(os.path.join(folder, name)).read())
        used = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import)
                for a in n.names]
        used += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        used += [_dotted(n) for n in ast.walk(tree) if isinstance(n, ast.Attribute)]
        bad = [u for u in used if u.startswith(("tensorflow.lite", "tensorflow.core",
                                                "tf.lite"))]
        assert bad == [], (name, bad)
    assert "ai_edge_litert" in open(os.path.join(folder, "checks.py")).read()
