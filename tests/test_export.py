"""Tests of the TFLite export (tfprec.export).

The models are small and trained for a few steps on synthetic data.  The
checks here are independent of tfprec's graph parser and of the exporter's own
report: BatchNormalization is folded by hand, the fixed-point network is
simulated in plain numpy, and the .tflite file is read back through the
LiteRT interpreter (ai_edge_litert) by following each weight layer's kernel
tensor to the operator that consumes it (operators parsed from the file with
the LiteRT schema).
"""
from __future__ import annotations

import dataclasses
import os
import types

import numpy as np
import pytest

from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from tfprec._tf import keras
from tfprec import fixedpoint
from tfprec.errors import ExportError
from tfprec.export import (ExportReport, agreement, export_tflite, simulate_plan,
                           tflite_predict)

L = keras.layers
N_EVAL = 400
RESOLVER = {"xnnpack": "auto", "reference": "ref", "optimized": "builtin"}

# ----------------------------------------------------------------- helpers
def pow2_ceil(v: float) -> float:
    return float(2.0 ** np.ceil(np.log2(v))) if v > 0 else 1.0


def folded(model, name):
    """Kernel and bias of weight layer ``name`` with a following BN folded."""
    layer = model.get_layer(name)
    w = [np.asarray(v, np.float64) for v in layer.get_weights()]
    k = w[0]
    dw = isinstance(layer, L.DepthwiseConv2D)          # kernel [kh, kw, C, M]
    outs = k.shape[2] * k.shape[3] if dw else k.shape[-1]
    b = w[1] if len(w) > 1 else np.zeros(outs)
    bns = [bn for bn in model.layers if isinstance(bn, L.BatchNormalization)
           and bn.input is layer.output]
    if len(bns) == 1:
        (bn,) = bns
        gamma, beta, mean, var = [np.asarray(v, np.float64) for v in bn.get_weights()]
        scale = gamma / np.sqrt(var + bn.epsilon)
        k = k * (scale.reshape(k.shape[2:]) if dw else scale)
        b = (b - mean) * scale + beta
    return k, b


def make_plan(model, x, spec):
    """A PrecisionPlan: spec = {layer: (B_W, B_A)}; ranges from the data."""
    from tfprec.planning import plan as plan_mod
    names = list(spec)
    sub = keras.Model(model.inputs, [model.get_layer(n).input for n in names])
    ins = sub.predict(x, verbose=0)
    ins = ins if isinstance(ins, list) else [ins]
    from tfprec.statistics.gains import layer_geometry
    geo = {g["name"]: g for g in layer_geometry(model)}
    layers = []
    for n, a in zip(names, ins):
        k, b = folded(model, n)
        signed = bool(a.min() < 0)
        r_a = pow2_ceil(np.abs(a).max()) if signed else pow2_ceil(a.max() / 2)
        vals = dict(name=n, layer_class=type(model.get_layer(n)).__name__,
                    weight_bits=spec[n][0], act_bits=spec[n][1],
                    weight_range=pow2_ceil(max(np.abs(k).max(), np.abs(b).max())),
                    act_range=r_a, act_signed=signed,
                    num_weights=int(k.size + b.size), num_inputs=int(np.prod(a.shape[1:])),
                    g_w=0.0, g_a=0.0, dot_length=geo[n]["dot_length"],
                    num_dots=geo[n]["num_dots"])
        fields = {f.name for f in dataclasses.fields(plan_mod.LayerPrecision)}
        layers.append(plan_mod.LayerPrecision(**{k_: v for k_, v in vals.items()
                                                 if k_ in fields}))
    return plan_mod.PrecisionPlan(layers=tuple(layers), method="test")


def q(v, bits, r, signed):
    return fixedpoint.quantize(v, bits, r, signed)


def conv_same(a, k, b):
    """numpy 'SAME' stride-1 conv, NHWC x HWIO."""
    kh, kw = k.shape[:2]
    ph, pw = (kh - 1) // 2, (kw - 1) // 2
    ap = np.pad(a, ((0, 0), (ph, kh - 1 - ph), (pw, kw - 1 - pw), (0, 0)))
    h, w = a.shape[1:3]
    out = np.zeros(a.shape[:3] + (k.shape[3],))
    for i in range(kh):
        for j in range(kw):
            out += np.einsum("nhwc,co->nhwo", ap[:, i:i + h, j:j + w], k[i, j])
    return out + b


def sim_layer(model, plan, name, a, fn=lambda a, k, b: a @ k + b):
    """Weight layer ``name`` of the plan's fixed-point network on input ``a``:
    fn(input, kernel, bias), each rounded to its planned format (BN folded)."""
    lp = plan.layer(name)
    k, b = folded(model, name)
    return fn(q(np.asarray(a, np.float64), lp.act_bits, lp.act_range, lp.act_signed),
              q(k, lp.weight_bits, lp.weight_range, True),
              q(b, lp.weight_bits, lp.weight_range, True))


def sim_dense_chain(model, plan, x, layers):
    """layers: [(name, activation or None)] applied in order."""
    a = x
    for n, act in layers:
        a = sim_layer(model, plan, n, a)
        a = act(a) if act else a
    return a


def sim_mlp(model, plan, x):
    return sim_dense_chain(model, plan, x, [("d1", lambda t: np.maximum(t, 0)),
                                            ("d2", lambda t: np.clip(t, 0, 2)),
                                            ("d3", None)])


def sim_cnn(model, plan, x):
    y = np.clip(sim_layer(model, plan, "c1", x, conv_same), 0, 2)
    n, h, w, c = y.shape
    y = y.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4)).reshape(n, -1)
    return sim_layer(model, plan, "d1", y)


def _interp(path):
    return Interpreter(model_path=str(path), experimental_preserve_all_tensors=True,
                       experimental_op_resolver_type=(
                           OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES))


def _ops_of(path):
    """[{'op_name', 'inputs', 'outputs'}] of the file's operators, parsed with
    the LiteRT flatbuffer schema (independently of the exporter's writer)."""
    with open(path, "rb") as f:
        m = schema.ModelT.InitFromPackedBuf(bytearray(f.read()), 0)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items()
             if not k.startswith("_")}
    return [{"op_name": names[m.operatorCodes[o.opcodeIndex].builtinCode],
             "inputs": [int(i) for i in o.inputs], "outputs": [int(i) for i in o.outputs]}
            for o in m.subgraphs[0].operators]


def read_back(path, x, names):
    """{layer: (weights detail, weights, input detail, input values)} read
    from the .tflite by following the ``<layer>/kernel`` tensor to its
    consumer; DEQUANTIZE hops are followed back to the stored tensor."""
    it = _interp(path)
    inp = it.get_input_details()[0]["index"]
    it.resize_tensor_input(inp, list(x.shape))
    it.allocate_tensors()
    it.set_tensor(inp, x.astype(np.float32))
    it.invoke()
    det = {d["index"]: d for d in it.get_tensor_details()}
    ops = _ops_of(path)
    producer = {int(o): op for op in ops for o in op["outputs"]}
    by_name = {d["name"]: i for i, d in det.items()}
    out = {}
    for n in names:
        kidx = by_name[f"{n}/kernel"]
        kin = kidx
        cons = [op for op in ops if kidx in list(op["inputs"])]
        if cons and cons[0]["op_name"] == "DEQUANTIZE":   # float compute
            kin = int(cons[0]["outputs"][0])
            cons = [op for op in ops if kin in list(op["inputs"])]
        (op,) = cons
        assert op["op_name"] in ("FULLY_CONNECTED", "CONV_2D", "BATCH_MATMUL",
                                 "DEPTHWISE_CONV_2D")
        aidx = int(op["inputs"][0])
        p = producer.get(aidx)
        if p is not None and p["op_name"] == "DEQUANTIZE":
            aidx = int(p["inputs"][0])
        out[n] = (det[kidx], it.get_tensor(kidx), det[aidx], it.get_tensor(aidx),
                  op["op_name"])
    return out


def check_weights_on_grid(detail, w, lp, k_folded, op_name):
    step = fixedpoint.step(lp.weight_bits, lp.weight_range)
    lo, hi = fixedpoint.int_limits(lp.weight_bits, True)
    codes_ref = fixedpoint.quantize_int(k_folded, lp.weight_bits, lp.weight_range, True)
    scales = detail["quantization_parameters"]["scales"]
    zps = detail["quantization_parameters"]["zero_points"]
    mul = 1
    if lp.weight_bits <= 8:
        assert w.dtype == np.int8
        assert len(scales) == 1 and list(zps) == [0]       # one scale per tensor
        # stored as the code (scale Delta_W) or, for the odd-accumulator
        # requantization or an int32 bias, as 2^t * code at scale Delta_W / 2^t
        # (int8 holds that while B_W + t <= 8): the same values exactly
        mul = int(round(step / float(scales[0])))
        assert mul in [2 ** t for t in range(9 - lp.weight_bits)]
        assert float(scales[0]) * mul == step
        codes = w.astype(np.int64)
        assert np.all(codes % mul == 0)
        codes = codes // mul
    else:
        assert w.dtype == np.float32 and len(scales) == 0
        codes = w.astype(np.float64) / step
        assert np.array_equal(codes, np.round(codes))
        codes = codes.astype(np.int64)
    assert codes.min() >= lo and codes.max() <= hi
    # the very codes of the plan, in the layout of the consuming TFLite op
    want = {"FULLY_CONNECTED": lambda c: c.T, "BATCH_MATMUL": lambda c: c,
            "CONV_2D": lambda c: np.transpose(c, (3, 0, 1, 2)),
            "DEPTHWISE_CONV_2D": lambda c: c.reshape(1, *c.shape[:2], -1)}[op_name](codes_ref)
    assert np.array_equal(codes, want)
    return codes


def check_acts_on_grid(detail, a, lp):
    step = fixedpoint.step(lp.act_bits, lp.act_range)
    lo, hi = fixedpoint.int_limits(lp.act_bits, lp.act_signed)
    scales = detail["quantization_parameters"]["scales"]
    zps = detail["quantization_parameters"]["zero_points"]
    if lp.act_bits <= 8:
        assert a.dtype == np.int8
        assert len(scales) == 1 and len(zps) == 1
        # stored as the code (scale Delta_A) or, for the odd-accumulator
        # requantization of a layer with 8-bit weights, as 2 * code at scale
        # Delta_A / 2 (int8 holds that while B_A <= 7): the same values
        mul = int(round(step / float(scales[0])))
        assert mul in (1, 2) and float(scales[0]) * mul == step
        assert mul == 1 or lp.act_bits <= 7
        top = mul * (2 ** lp.act_bits - 1)
        zp = int(zps[0])
        assert zp == (-128 if (not lp.act_signed and top > 127) else 0)
        codes = a.astype(np.int64) - zp
        assert np.all(codes % mul == 0)
        codes = codes // mul
    else:
        assert a.dtype == np.float32 and len(scales) == 0
        codes = a.astype(np.float64) / step
        assert np.array_equal(codes, np.round(codes))
    assert codes.min() >= lo and codes.max() <= hi
    return codes


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def mlp():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 20)).astype(np.float32)
    y = (x[:, :5].sum(1) > 0).astype(int) + 2 * (x[:, 5] - x[:, 6] > 0)
    keras.utils.set_random_seed(0)
    m = keras.Sequential([L.Input((20,)), L.Dense(32, activation="relu", name="d1"),
                          L.Dense(16, name="d2"), L.ReLU(max_value=2.0, name="clip"),
                          L.Dense(4, name="d3")])
    m.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    m.fit(x, y, epochs=4, batch_size=64, verbose=0)
    return m, x


@pytest.fixture(scope="module")
def cnn():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(600, 8, 8, 3)).astype(np.float32)
    y = ((x[:, :4, :4, 0].mean((1, 2)) > 0).astype(int)
         + 2 * (x[:, :, :, 1].mean((1, 2)) > 0))
    keras.utils.set_random_seed(1)
    m = keras.Sequential([L.Input((8, 8, 3)), L.Conv2D(6, 3, padding="same", name="c1"),
                          L.BatchNormalization(name="bn"), L.ReLU(max_value=2.0),
                          L.MaxPooling2D(2), L.Flatten(), L.Dense(4, name="d1")])
    m.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    m.fit(x, y, epochs=4, batch_size=64, verbose=0)
    return m, x


MLP_SPEC = {"d1": (3, 8), "d2": (8, 4), "d3": (12, 12)}
CNN_SPECS = [{"c1": (3, 8), "d1": (8, 4)}, {"c1": (12, 12), "d1": (3, 4)}]


# ------------------------------------------------------------------- tests
def test_mlp_export_grids_agreement_and_12_bit_layer(mlp, tmp_path):
    m, x = mlp
    w0 = [w.copy() for w in m.get_weights()]
    plan = make_plan(m, x, MLP_SPEC)
    path = tmp_path / "mlp.tflite"
    rep = export_tflite(m, plan, str(path), representative_data=x[:64])
    assert isinstance(rep, ExportReport)
    assert rep.grid_check_passed
    assert [l.name for l in rep.layers] == ["d1", "d2", "d3"]
    d1, d2, d3 = rep.layers
    assert (d1.weight_dtype, d1.act_dtype, d1.compute) == ("int8", "int8", "int8")
    assert (d2.weight_dtype, d2.act_dtype, d2.compute) == ("int8", "int8", "int8")
    assert (d3.weight_dtype, d3.act_dtype, d3.compute) == ("float32", "float32", "float32")
    assert rep.file_size_bytes == os.path.getsize(path)
    expected_bits = sum(b_w * (m.get_layer(n).kernel.shape.num_elements()
                               + m.get_layer(n).bias.shape[0])
                        + b_a * m.get_layer(n).input.shape[-1]
                        for n, (b_w, b_a) in MLP_SPEC.items())
    assert rep.plan_bits == expected_bits
    md = rep.to_markdown()
    assert all(n in md for n in MLP_SPEC) and "d3" in md

    # independent read-back of every weight and input tensor
    got = read_back(path, x[:32], list(MLP_SPEC))
    wcodes, acodes = {}, {}
    for n in MLP_SPEC:
        wd, w, ad, a, op_name = got[n]
        lp = plan.layer(n)
        wcodes[n] = check_weights_on_grid(wd, w, lp, folded(m, n)[0], op_name)
        acodes[n] = check_acts_on_grid(ad, a, lp)
    # the 12-bit layer is not rounded coarser: some weight codes are not on
    # the 8-bit grid (multiples of 16), and its input holds 12-bit codes
    wd, w, ad, a, _ = got["d3"]
    codes_w = w.astype(np.float64) / fixedpoint.step(12, plan.layer("d3").weight_range)
    assert np.any(np.mod(codes_w, 16) != 0)
    codes_a = a.astype(np.float64) / fixedpoint.step(12, plan.layer("d3").act_range)
    assert np.any(np.mod(codes_a, 16) != 0)
    # the 4-bit unsigned input of d2 uses codes 0..15 only; 3-bit d1 weights -4..3
    assert acodes["d2"].min() >= 0 and acodes["d2"].max() <= 15
    assert wcodes["d1"].min() >= -4 and wcodes["d1"].max() <= 3

    # logits: TFLite vs the numpy fixed-point simulation (and tfprec's own)
    xe = x[:N_EVAL]
    sim = sim_mlp(m, plan, xe)
    logits = tflite_predict(str(path), xe, batch_size=128)
    assert logits.shape == (N_EVAL, 4)
    assert agreement(sim, logits) >= 0.995
    np.testing.assert_allclose(logits, sim, atol=1e-4)
    assert len(np.unique(np.argmax(logits, 1))) >= 2
    np.testing.assert_allclose(simulate_plan(m, plan, xe), sim, atol=1e-9)
    # the Keras model is unchanged
    assert all(np.array_equal(a_, b_) for a_, b_ in zip(w0, m.get_weights()))


@pytest.mark.parametrize("spec", CNN_SPECS, ids=["int8-conv", "12bit-conv"])
def test_cnn_export_grids_and_agreement(cnn, tmp_path, spec):
    m, x = cnn
    w0 = [w.copy() for w in m.get_weights()]
    plan = make_plan(m, x, spec)
    path = tmp_path / "cnn.tflite"
    rep = export_tflite(m, plan, str(path), representative_data=x[:32])
    assert rep.grid_check_passed
    assert rep.sim_agreement == 1.0
    c1, d1 = rep.layers
    if spec["c1"][0] <= 8:
        # conv output requantized by the int8 kernel straight onto d1's grid
        assert c1.compute == "int8" and c1.output.startswith("int8 on the input grid of d1")
    else:
        assert (c1.weight_dtype, c1.act_dtype, c1.compute) == ("float32",) * 3
    assert (d1.weight_dtype, d1.act_dtype, d1.compute) == ("int8", "int8", "int8")

    got = read_back(path, x[:16], ["c1", "d1"])
    for n in ("c1", "d1"):
        wd, w, ad, a, op_name = got[n]
        lp = plan.layer(n)
        check_weights_on_grid(wd, w, lp, folded(m, n)[0], op_name)
        check_acts_on_grid(ad, a, lp)

    xe = x[:N_EVAL]
    sim = sim_cnn(m, plan, xe)
    logits = tflite_predict(str(path), xe)
    assert agreement(sim, logits) >= 0.995
    np.testing.assert_allclose(logits, sim, atol=1e-4)
    assert len(np.unique(np.argmax(logits, 1))) >= 2
    assert all(np.array_equal(a_, b_) for a_, b_ in zip(w0, m.get_weights()))


@pytest.mark.parametrize("kernels", ["xnnpack", "reference", "optimized"])
def test_signed_grids_round_like_the_plan_on_each_kernel_family(tmp_path, kernels):
    """Linear activations put the next layer's input on a signed grid, where
    TFLite's kernels break rounding ties in their own ways; the export for a
    kernel family must still round exactly like the plan on that family."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(500, 12)).astype(np.float32)
    y = (x[:, :4].sum(1) > 0).astype(int) + 2 * (x[:, 4] > 0)
    keras.utils.set_random_seed(2)
    m = keras.Sequential([L.Input((12,)), L.Dense(24, name="a"),
                          L.Dense(16, activation="relu", name="b"), L.Dense(4, name="c")])
    m.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    m.fit(x, y, epochs=2, batch_size=64, verbose=0)
    plan = make_plan(m, x, {"a": (6, 6), "b": (5, 5), "c": (4, 4)})
    assert plan.layer("b").act_signed
    path = str(tmp_path / f"signed_{kernels}.tflite")
    rep = export_tflite(m, plan, path, representative_data=x[:32], kernels=kernels)
    assert rep.grid_check_passed and rep.sim_agreement == 1.0
    assert rep.layer("a").output.startswith("int8 on the input grid of b")
    assert all(l.act_codes_match == 1.0 for l in rep.layers)
    sim = sim_dense_chain(m, plan, x, [("a", None), ("b", lambda t: np.maximum(t, 0)),
                                       ("c", None)])
    logits = tflite_predict(path, x, resolver=RESOLVER[kernels])
    assert agreement(sim, logits) >= 0.995
    np.testing.assert_allclose(logits, sim, atol=1e-4)


def test_tflite_predict_batches_and_agreement_inputs(cnn, tmp_path):
    m, x = cnn
    plan = make_plan(m, x, CNN_SPECS[0])
    path = str(tmp_path / "cnn.tflite")
    export_tflite(m, plan, path, representative_data=x[:16])
    a = tflite_predict(path, x[:50], batch_size=7)
    b = tflite_predict(path, x[:50], batch_size=256)
    np.testing.assert_array_equal(a, b)
    assert agreement(path, b, x=x[:50]) == 1.0
    assert 0.0 <= agreement(m, path, x=x[:50]) <= 1.0


def test_unwritable_path_raises_and_leaves_no_file(mlp, tmp_path):
    m, x = mlp
    plan = make_plan(m, x, MLP_SPEC)
    bad = tmp_path / "missing_dir" / "m.tflite"
    with pytest.raises(ExportError, match="missing_dir"):
        export_tflite(m, plan, str(bad), representative_data=x[:8])
    assert not bad.exists() and not bad.parent.exists()
    # a path that is an existing directory: no temp file is left next to it
    d = tmp_path / "a_dir"
    d.mkdir()
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(ExportError, match="a_dir"):
        export_tflite(m, plan, str(d), representative_data=x[:8])
    assert sorted(os.listdir(tmp_path)) == before and os.listdir(d) == []


def test_layer_that_cannot_be_exported_is_named(mlp, tmp_path):
    m, x = mlp
    plan = make_plan(m, x, MLP_SPEC)
    bad_layers = [types.SimpleNamespace(**{**vars_of(lp), "weight_bits": 1})
                  if lp.name == "d2" else lp for lp in plan.layers]
    bad = types.SimpleNamespace(layers=tuple(bad_layers))
    with pytest.raises(ExportError, match="d2"):
        export_tflite(m, bad, str(tmp_path / "x.tflite"))
    missing = types.SimpleNamespace(layers=tuple(plan.layers[:2]))
    with pytest.raises(ExportError, match="d3"):
        export_tflite(m, missing, str(tmp_path / "x.tflite"))
    # a layer the exporter cannot represent at all
    odd = keras.Sequential([L.Input((4,)), L.Dense(3, name="fc"),
                            L.LeakyReLU(name="leaky"), L.Dense(2, name="out")])
    x4 = np.random.default_rng(5).normal(size=(32, 4)).astype(np.float32)
    odd_plan = make_plan(odd, x4, {"fc": (8, 8), "out": (8, 8)})
    with pytest.raises(ExportError, match="leaky"):
        export_tflite(odd, odd_plan, str(tmp_path / "y.tflite"), backend="exact")
    with pytest.raises(ExportError, match="kernels"):
        export_tflite(m, plan, str(tmp_path / "z.tflite"), kernels="gpu")
    assert not any(p.suffix == ".tflite" for p in tmp_path.iterdir())


def vars_of(lp):
    return {f.name: getattr(lp, f.name) for f in dataclasses.fields(lp)}
