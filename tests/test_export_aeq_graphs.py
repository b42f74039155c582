"""The ai_edge_quantizer backend on graphs beyond a chain of Dense / Conv2D /
DepthwiseConv2D layers: residual Adds, global pooling, a standalone
BatchNormalization (the plan's per-channel affine op), a SeparableConv2D (two
weight ops), layers on tfprec's generic path, and inputs of 16 bits unsigned
(which no LiteRT integer type holds).

Whatever the plan does not round runs in float32 in the file, and where a
weight op's input does not come straight from an integer producer it is
rounded explicitly, so the file computes the fake-quant model's network:
its logits are recomputed here with the fake-quant Keras model, and the
decisions compared under every kernel family.
"""
import numpy as np
import pytest

import tfprec
from tfprec._tf import keras
from tfprec.application import data as data_lib
from tfprec.export.aeq_recipe import read_graph
from tfprec.export.runtime import run_family
from tfprec.export.tflite import export_tflite
from tfprec.quantization.apply import logits_model, quantize_model

L = keras.layers
FAMILIES = ("xnnpack", "optimized", "reference")


def _resnet_like():
    keras.utils.set_random_seed(1)
    x = inp = keras.Input((16, 16, 3), name="input")
    x = L.Conv2D(8, 3, padding="same", use_bias=False, name="stem")(x)
    x = L.BatchNormalization(name="stem_bn")(x)
    x = L.ReLU(6.0, name="stem_relu")(x)
    y = L.DepthwiseConv2D(3, padding="same", name="dw")(x)
    y = L.ReLU(6.0, name="dw_relu")(y)
    y = L.Conv2D(8, 1, name="project")(y)          # feeds the Add: not requantized
    x = L.Add(name="add")([x, y])
    x = L.BatchNormalization(name="standalone_bn")(x)   # the affine op
    x = L.SeparableConv2D(12, 3, padding="same", activation="relu", name="sep")(x)
    x = L.PReLU(name="prelu")(L.Conv2D(12, 1, name="mix")(x))  # PReLU: generic op
    x = L.GlobalAveragePooling2D(name="gap")(x)
    m = keras.Model(inp, L.Dense(10, name="logits")(x))
    rng = np.random.default_rng(0)
    for layer in m.layers:      # random weights: decisions vary
        if not isinstance(layer, L.BatchNormalization):
            layer.set_weights([rng.normal(0, 0.4, w.shape) for w in layer.get_weights()])
        else:
            g, b, mu, v = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, g.shape), rng.normal(0, 0.2, b.shape),
                               rng.normal(0, 0.2, mu.shape), rng.uniform(0.5, 2, v.shape)])
    return m


@pytest.fixture(scope="module")
def cifar():
    ds = data_lib.load_dataset("cifar10")
    return ds.x_test[:400, 8:24, 8:24], ds.y_test[:400]


def _tiny_residual():
    keras.utils.set_random_seed(2)
    x = inp = keras.Input((8, 8, 3), name="input")
    x = L.Conv2D(6, 3, padding="same", activation="relu", name="c1")(x)
    y = L.Conv2D(6, 3, padding="same", activation="relu", name="c2")(x)
    y = L.Conv2D(6, 1, name="c3")(y)
    x = L.GlobalAveragePooling2D(name="gap")(L.Add(name="add")([x, y]))
    m = keras.Model(inp, L.Dense(10, name="logits")(x))
    rng = np.random.default_rng(2)      # random weights: decisions vary
    m.set_weights([rng.normal(0, 0.4, w.shape) for w in m.get_weights()])
    return m


@pytest.fixture(scope="module")
def resnet_like(cifar):
    x, _ = cifar
    m = _resnet_like()
    return m, tfprec.noise_gains(m, x[:200])


def _fake_quant_logits(m, plan, x):
    return np.asarray(logits_model(quantize_model(m, plan)).predict(x, verbose=0),
                      np.float64)


def _check_file(content, m, plan, x, rep, vary: bool = True):
    """Logits equal the fake-quant model's on the family the file is tuned
    for; decisions per family as the report says."""
    ref = _fake_quant_logits(m, plan, x)
    for fam in FAMILIES:
        out = run_family(content, x, fam)
        if fam == rep.kernels:
            np.testing.assert_allclose(out, ref, atol=1e-5 * max(1.0, np.abs(ref).max()))
        assert float(np.mean(np.argmax(out, -1) == np.argmax(ref, -1))) == \
            rep.agreement_by_kernels[fam]
    assert rep.agreement_by_kernels[rep.kernels] == 1.0
    assert not vary or len(set(np.argmax(ref, -1))) > 1     # decisions vary


@pytest.mark.slow   # default-suite time (< 5 min); see README
def test_add_and_pooling_run_float_on_exact_grids(cifar, tmp_path):
    x, _ = cifar
    x = x[:200, :8, :8]
    m = _tiny_residual()
    plan = tfprec.uniform_plan(tfprec.noise_gains(m, x), bits=5)
    path = str(tmp_path / "tiny.tflite")
    rep = export_tflite(m, plan, path, x, backend="aeq", check_examples=len(x))
    by = {l.name: l for l in rep.layers}
    # c2's output is requantized onto c3's (unsigned) input grid: integer;
    # c1 feeds the Add, c3 the Add: weight-only float compute
    assert [by[n].act_type for n in ("c1", "c2", "c3", "logits")] == \
        ["float", "int8", "float", "float"]
    assert [by[n].stored_weight for n in ("c1", "c2", "c3", "logits")] == ["int8"] * 4
    assert rep.grid_check_passed
    with open(path, "rb") as f:
        _check_file(f.read(), m, plan, x, rep)


@pytest.mark.slow
def test_residual_graph_exact_on_every_family(resnet_like, cifar, tmp_path):
    m, gains = resnet_like
    x, y = cifar
    plan = tfprec.uniform_plan(gains, bits=6)
    path = str(tmp_path / "res.tflite")
    rep = export_tflite(m, plan, path, x, labels=y, backend="aeq", check_examples=len(x))
    assert rep.grid_check_passed
    by = {l.name: l for l in rep.layers}
    assert set(by) == {lp.name for lp in plan.layers}
    # dw's output is requantized onto project's input grid: integer kernel;
    # stem's and project's outputs meet the Add: float compute (weight-only)
    assert by["dw"].act_type == "int8"
    for name in ("stem", "project"):
        assert by[name].act_type == "float" and by[name].weight_type == "int8", name
        assert any("not requantized" in n for n in by[name].notes), name
    # the affine BN and the generic PReLU run as float32 operators on their grids
    assert by["standalone_bn"].weight_type == "float"
    assert by["prelu"].weight_type == "float"
    with open(path, "rb") as f:
        content = f.read()
    _check_file(content, m, plan, x, rep, vary=False)      # logits checked
    g = read_graph(content)
    ops = {op.name for op in g.ops}
    assert {"ADD", "FLOOR"} <= ops             # float Add, explicit rounding


@pytest.mark.slow
def test_sixteen_bit_unsigned_input_runs_float(resnet_like, cifar, tmp_path):
    m, gains = resnet_like
    x, _ = cifar
    plan = tfprec.uniform_plan(gains, bits=8).with_bits(act_bits={"dw": 16})
    assert not plan.layer("dw").act_signed          # a ReLU6 output
    rep = export_tflite(m, plan, str(tmp_path / "u16.tflite"), x[:200], backend="aeq",
                        check_examples=200)
    dw = next(l for l in rep.layers if l.name == "dw")
    assert dw.act_type == "float" and dw.stored_input == "float32"
    assert any("fits no LiteRT integer type" in n for n in dw.notes)
    assert rep.grid_check_passed
    assert rep.agreement_by_kernels[rep.kernels] == 1.0


def _random_weights(m, seed):
    rng = np.random.default_rng(seed)
    m.set_weights([rng.normal(0, 0.5, w.shape) for w in m.get_weights()])
    return m


@pytest.mark.slow
def test_embedding_and_several_inputs(tmp_path):
    """Token ids into an Embedding (a table on the plan's grid, no input
    format) next to an image branch: a two-input file whose signature takes
    both inputs by name, and whose decisions are the fake-quant model's."""
    keras.utils.set_random_seed(3)
    ids = keras.Input((6,), dtype="int32", name="tokens")
    img = keras.Input((6, 6, 2), name="image")
    t = L.GlobalAveragePooling1D(name="pool_t")(L.Embedding(20, 4, name="emb")(ids))
    i = L.Flatten(name="flat")(L.Conv2D(3, 3, activation="relu", name="conv")(img))
    h = L.Concatenate(name="cat")([t, L.Dense(4, activation="relu", name="fc_i")(i)])
    m = _random_weights(keras.Model([ids, img], L.Dense(5, name="logits")(h)), 3)
    rng = np.random.default_rng(0)
    data = [rng.integers(0, 20, (200, 6)).astype(np.int32),
            rng.uniform(0, 1, (200, 6, 6, 2)).astype(np.float32)]
    plan = tfprec.uniform_plan(tfprec.noise_gains(m, data), bits=6)
    assert plan.layer("emb").act_bits is None
    path = str(tmp_path / "two.tflite")
    rep = export_tflite(m, plan, path, data, check_examples=200)     # auto backend
    assert rep.backend == "ai_edge_quantizer" and rep.grid_check_passed
    by = {l.name: l for l in rep.layers}
    assert by["emb"].weight_type == "float" and by["emb"].act_bits is None
    with open(path, "rb") as f:
        content = f.read()
    ref = _fake_quant_logits(m, plan, data)
    out = run_family(content, data, "xnnpack", names=["tokens", "image"])
    np.testing.assert_allclose(out, ref, atol=1e-5 * max(1.0, np.abs(ref).max()))
    assert len(set(np.argmax(ref, -1))) > 1
    assert rep.agreement_by_kernels["xnnpack"] == 1.0
    # the table stored in the file is the plan's rounded table
    from tfprec.fixedpoint import quantize
    lp = plan.layer("emb")
    want = quantize(m.get_layer("emb").get_weights()[0], lp.weight_bits, lp.weight_range, True)
    g = read_graph(content)
    tables = [g.const(i).view(np.float32) for op in g.ops if op.name == "GATHER"
              for i in op.inputs if g.const(i) is not None]
    assert any(t.size == want.size and np.array_equal(t.reshape(want.shape), want)
               for t in tables)


def _generic_layers_1d():
    keras.utils.set_random_seed(4)
    x = inp = keras.Input((12, 3), name="seq")
    x = L.Conv1D(6, 3, dilation_rate=2, padding="causal", activation="relu", name="c1d")(x)
    x = L.LayerNormalization(name="ln")(x)
    x = L.Dense(5, activation="tanh", name="dseq")(x)                  # Dense on [B, T, D]
    x = L.GlobalAveragePooling1D(name="gap")(x)
    return _random_weights(keras.Model(inp, L.Dense(4, name="logits")(x)), 4)


def _generic_layers_2d():
    keras.utils.set_random_seed(5)
    x = inp = keras.Input((6, 6, 4), name="img")
    x = L.Conv2DTranspose(4, 3, strides=2, padding="same", activation="relu", name="up")(x)
    x = L.Conv2D(4, 3, dilation_rate=2, activation="relu", name="dil")(x)
    x = L.Conv2D(4, 3, groups=2, activation="relu", name="grp")(x)
    x = L.Flatten(name="f")(x)
    return _random_weights(keras.Model(inp, L.Dense(4, name="logits")(x)), 5)


@pytest.mark.slow
@pytest.mark.parametrize("build, shape", [(_generic_layers_1d, (12, 3)),
                                          (_generic_layers_2d, (6, 6, 4))])
def test_generic_weight_layers_export(build, shape, tmp_path):
    """Conv1D, LayerNormalization, Dense on sequences, Conv2DTranspose,
    dilated and grouped convolutions: float32 operators with their weights
    on the plan's grid and their inputs rounded explicitly; the file's
    logits are the fake-quant model's."""
    m = build()
    x = np.random.default_rng(0).normal(0, 1, (200, *shape)).astype(np.float32)
    plan = tfprec.uniform_plan(tfprec.noise_gains(m, x), bits=6)
    path = str(tmp_path / "g.tflite")
    rep = export_tflite(m, plan, path, x, check_examples=len(x))
    assert rep.backend == "ai_edge_quantizer" and rep.grid_check_passed
    generic = [l for l in rep.layers if l.kind == "generic"]
    assert generic and all(l.weight_type == "float" for l in generic)
    with open(path, "rb") as f:
        _check_file(f.read(), m, plan, x, rep, vary=False)        # logits checked


def test_a_reference_file_tf_cannot_make_is_a_row_with_its_error(monkeypatch):
    """baselines=True: when TF's own int8 PTQ fails on a model (e.g. integer
    inputs), the report keeps a row naming the error instead of failing."""
    from tfprec.export import aeq_report, runtime

    def fail(*a, **k):
        raise ValueError("no int8 kernel for this model")
    monkeypatch.setattr(runtime, "tf_int8_ptq", fail)
    m = _tiny_residual()
    x = np.random.default_rng(0).uniform(0, 1, (8, 8, 8, 3)).astype(np.float32)
    rows = aeq_report.baseline_rows(m, x, x, None, False)
    assert [r["name"] for r in rows] == ["TF float32", "TF int8 PTQ"]
    assert rows[0]["size_bytes"] > 0
    assert rows[1]["size_bytes"] is None and "no int8 kernel" in rows[1]["error"]
