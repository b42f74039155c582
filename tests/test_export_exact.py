"""The exact TFLite writer on every LiteRT kernel family (issue 11).

Checked independently of the exporter: the plan's fixed-point network is
simulated in plain numpy (helpers of tests/test_export.py), the written file
is run through ``ai_edge_litert``'s Interpreter on each op resolver, and its
operators, signature and metadata are parsed back with the LiteRT schema.

* requantizations are exact on XNNPACK, BUILTIN_REF and the builtin kernels
  alike (a layer whose accumulators hit rounding ties in a quarter of all
  values, on a signed grid);
* the export's own check runs the written file on every family on >= 2000
  examples and its per-family agreement equals a recount;
* every file has the ``serving_default`` signature;
* a conv feeding global average pooling runs as an int8 CONV_2D, and no
  int8 layer has a float32 bias;
* where exactness depends on the family (8-bit weights), the report and the
  file's metadata say so, and the measurement agrees.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter

from test_export import RESOLVER, conv_same, sim_dense_chain, sim_layer
from tfprec._tf import keras
from tfprec.errors import ExportError
from tfprec.export import export_tflite, tflite_predict

L = keras.layers
FAMILIES = ("xnnpack", "reference", "optimized")
N_CHECK = 2000


# ----------------------------------------------------------------- helpers
def plan_of(model, spec):
    """A PrecisionPlan with given formats: spec = {layer: (B_W, B_A, R_W, R_A,
    signed input)}."""
    from tfprec.planning import plan as plan_mod
    layers = []
    for name, (bw, ba, rw, ra, signed) in spec.items():
        layer = model.get_layer(name)
        k, b = layer.get_weights()
        layers.append(plan_mod.LayerPrecision(
            name=name, layer_class=type(layer).__name__, weight_bits=bw, act_bits=ba,
            weight_range=rw, act_range=ra, act_signed=signed, g_w=0.0, g_a=0.0,
            dot_length=int(k.shape[0]) + 1, num_dots=int(k.shape[1]),
            num_weights=int(k.size + b.size), num_inputs=int(k.shape[0])))
    return plan_mod.PrecisionPlan(layers=tuple(layers), method="test")


def read_model(path):
    with open(path, "rb") as f:
        return schema.ModelT.InitFromPackedBuf(bytearray(f.read()), 0)


def op_names():
    return {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}


def type_names():
    return {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}


def metadata(path) -> dict:
    m = read_model(path)
    (entry,) = [e for e in (m.metadata or []) if e.name.decode() == "tfprec"]
    return json.loads(bytes(m.buffers[entry.buffer].data).decode("utf-8"))


def decisions_by_family(path, x):
    return {fam: tflite_predict(path, x, resolver=RESOLVER[fam]) for fam in FAMILIES}


# ------------------------------------------------- tie-prone signed layers
@pytest.fixture(scope="module")
def ties():
    """Dense a (16 -> 24, linear) then Dense b (24 -> 5): b's input step is
    4 accumulator units of a, so a quarter of a's accumulators are rounding
    ties and another quarter sit one unit below one, on a signed grid."""
    rng = np.random.default_rng(11)
    keras.utils.set_random_seed(11)
    m = keras.Sequential([L.Input((16,)), L.Dense(24, name="a"), L.Dense(5, name="b")])
    m.get_layer("a").set_weights([rng.integers(-8, 8, (16, 24)) / 8.0,
                                  rng.integers(-8, 8, 24) / 8.0])
    m.get_layer("b").set_weights([rng.normal(0, 0.3, (24, 5)), rng.normal(0, 0.1, 5)])
    x = rng.normal(0, 0.5, (2500, 16)).astype(np.float32)
    return m, x


def sim_ties(m, plan, x):
    return sim_dense_chain(m, plan, x, [("a", None), ("b", None)])


# a: 4-bit weights and input (steps 2^-3), accumulator unit 2^-6; b: 8-bit
# signed input of range 8, step 2^-4 = 4 accumulator units
TIES_SPEC = {"a": (4, 4, 1.0, 1.0, True), "b": (6, 8, 1.0, 8.0, True)}


def test_requantization_ties_are_exact_on_every_family(ties, tmp_path):
    m, x = ties
    plan = plan_of(m, TIES_SPEC)
    # the data really hits ties: a's accumulator / 4 is k + 1/2 often
    xq = np.floor(x.astype(np.float64) * 8 + 0.5).clip(-8, 7)
    acc = xq @ (m.get_layer("a").get_weights()[0] * 8) + m.get_layer("a").get_weights()[1] * 8
    assert np.mean(np.mod(acc, 4) == 2) > 0.2 and np.mean(np.mod(acc, 4) == 1) > 0.2
    path = str(tmp_path / "ties.tflite")
    rep = export_tflite(m, plan, path, representative_data=x, kernels="optimized")
    assert rep.check_examples == N_CHECK and rep.check_source == "representative_data"
    assert rep.layer("a").output.startswith("int8 on the input grid of b")
    assert set(rep.exact_on) == set(FAMILIES)
    assert set(metadata(path)["exact_on"]) == set(FAMILIES)
    sim = sim_ties(m, plan, x[:N_CHECK])
    for fam, logits in decisions_by_family(path, x[:N_CHECK]).items():
        # the logits are b's exact int32 accumulator times a power of two:
        # equal to the simulation only if every one of b's input codes is
        np.testing.assert_allclose(logits, sim, rtol=0, atol=1e-5, err_msg=fam)
        recount = float(np.mean(np.argmax(logits, 1) == np.argmax(sim, 1)))
        assert rep.agreement_by_kernels[fam] == recount == 1.0
        assert rep.act_codes_match_by_kernels[fam] == 1.0


def test_eight_bit_weights_double_a_narrow_input(ties, tmp_path):
    """8-bit weights cannot be stored doubled; a <= 7-bit input can: the
    layer's input is stored as 2*code at scale Delta_A/2 and the layer is
    exact on every family (read back: scale and even codes)."""
    m, x = ties
    rng = np.random.default_rng(12)
    m8 = keras.models.clone_model(m)
    m8.set_weights([rng.integers(-4, 5, (16, 24)) / 128.0, rng.integers(-4, 5, 24) / 128.0]
                   + m.get_weights()[2:])
    # a: steps 2^-7 (weights), 2^-3 (input); b's input step 2^-8 = 4 units
    plan = plan_of(m8, {"a": (8, 4, 1.0, 1.0, True), "b": (6, 8, 1.0, 0.5, True)})
    path = str(tmp_path / "w8.tflite")
    rep = export_tflite(m8, plan, path, representative_data=x)
    assert set(rep.layer("a").exact_on) == set(FAMILIES) == set(rep.exact_on)
    model = read_model(path)
    sg = model.subgraphs[0]
    kernel = [t.name.decode() for t in sg.tensors].index("a/kernel")
    (op,) = [o for o in sg.operators if kernel in list(o.inputs)]
    q = sg.tensors[op.inputs[0]].quantization
    assert list(q.scale) == [2.0 ** -4] and list(q.zeroPoint) == [0]   # Delta_A / 2
    sim = sim_ties(m8, plan, x[:N_CHECK])
    for fam, logits in decisions_by_family(path, x[:N_CHECK]).items():
        np.testing.assert_allclose(logits, sim, rtol=0, atol=1e-5, err_msg=fam)
        assert rep.agreement_by_kernels[fam] == 1.0


def test_eight_bit_weights_and_input_are_documented_per_family(ties, tmp_path):
    """8-bit weights and an 8-bit input leave no room for the odd
    accumulator: the layer is tuned for ``kernels``; report and metadata
    name the families where it is exact, and the measured agreement is what
    a recount gives."""
    m, x = ties
    rng = np.random.default_rng(12)
    m8 = keras.models.clone_model(m)
    m8.set_weights([rng.integers(-2, 3, (16, 24)) / 128.0, rng.integers(-2, 3, 24) / 128.0]
                   + m.get_weights()[2:])
    # a: steps 2^-7 (weights and input); b's input step 2^-12 = 4 units
    plan = plan_of(m8, {"a": (8, 8, 1.0, 1.0, True), "b": (6, 8, 1.0, 2.0 ** -5, True)})
    path = str(tmp_path / "w8a8.tflite")
    rep = export_tflite(m8, plan, path, representative_data=x, kernels="xnnpack")
    a = rep.layer("a")
    assert set(a.exact_on) == {"xnnpack", "reference"}       # single-rounding ones
    assert set(rep.exact_on) == {"xnnpack", "reference"}
    assert any("8-bit weights" in n for n in a.notes)
    md = metadata(path)
    assert set(md["layers"]["a"]["exact_on"]) == {"xnnpack", "reference"}
    assert set(md["exact_on"]) == {"xnnpack", "reference"}
    assert "optimized" not in rep.to_markdown().split("exact by construction")[1].split("\n")[0]
    sim = sim_ties(m8, plan, x[:N_CHECK])
    got = decisions_by_family(path, x[:N_CHECK])
    for fam, logits in got.items():
        recount = float(np.mean(np.argmax(logits, 1) == np.argmax(sim, 1)))
        assert rep.agreement_by_kernels[fam] == recount
        diff = float(np.max(np.abs(logits - sim)))
        assert rep.max_logit_diff_by_kernels[fam] == pytest.approx(diff, abs=1e-12)
        if fam in a.exact_on:
            np.testing.assert_allclose(logits, sim, rtol=0, atol=1e-5, err_msg=fam)
    # where the docs say it is not exact, it indeed is not (gemmlowp rounds
    # some values just below a tie up)
    assert np.max(np.abs(got["optimized"] - sim)) > 1e-5


def test_check_examples_default_and_fewer_examples(ties, tmp_path):
    m, x = ties
    plan = plan_of(m, TIES_SPEC)
    path = str(tmp_path / "few.tflite")
    rep = export_tflite(m, plan, path, representative_data=x[:300])
    assert rep.check_examples == 300
    sim = sim_ties(m, plan, x[:300])
    for fam, logits in decisions_by_family(path, x[:300]).items():
        assert rep.agreement_by_kernels[fam] == float(
            np.mean(np.argmax(logits, 1) == np.argmax(sim, 1)))


# ------------------------------------------------ a CNN with global pooling
@pytest.fixture(scope="module")
def gap_cnn():
    rng = np.random.default_rng(7)
    off = rng.normal(size=(2400, 1, 1, 3))            # the class signal
    x = (0.7 * rng.normal(size=(2400, 12, 12, 3)) + off).astype(np.float32)
    y = (off[:, 0, 0, 0] > 0).astype(int) + 2 * (off[:, 0, 0, 1] > 0)
    keras.utils.set_random_seed(7)
    m = keras.Sequential([
        L.Input((12, 12, 3), name="image"), L.Conv2D(8, 3, padding="same", name="c1"),
        L.BatchNormalization(name="bn1"), L.ReLU(max_value=2.0, name="r1"),
        L.MaxPooling2D(2, name="mp"), L.Conv2D(12, 3, padding="same", name="c2"),
        L.ReLU(max_value=2.0, name="r2"), L.GlobalAveragePooling2D(name="gap"),
        L.Dense(4, name="scores")])
    m.compile(keras.optimizers.Adam(0.01),
              keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    m.fit(x, y, epochs=3, batch_size=64, verbose=0)
    import tfprec
    from tfprec.planning.rules import uniform_plan
    plan = uniform_plan(tfprec.noise_gains(m, x[:200]), bits=3)
    return m, x, plan


def sim_gap_cnn(m, plan, x):
    y = np.clip(sim_layer(m, plan, "c1", x, conv_same), 0, 2)
    n, h, w, c = y.shape
    y = y.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))
    y = np.clip(sim_layer(m, plan, "c2", y, conv_same), 0, 2).mean(axis=(1, 2))
    return sim_layer(m, plan, "scores", y)


def test_three_bit_uniform_cnn_agrees_on_every_family(gap_cnn, tmp_path):
    m, x, plan = gap_cnn
    assert {lp.weight_bits for lp in plan.layers} == {3}
    path = str(tmp_path / "cnn3.tflite")
    rep = export_tflite(m, plan, path, representative_data=x)
    assert rep.check_examples == N_CHECK and set(rep.exact_on) == set(FAMILIES)
    sim = sim_gap_cnn(m, plan, x[:N_CHECK])
    assert np.min(np.bincount(np.argmax(sim, 1), minlength=4)) > 200   # not degenerate
    for fam, logits in decisions_by_family(path, x[:N_CHECK]).items():
        recount = float(np.mean(np.argmax(logits, 1) == np.argmax(sim, 1)))
        assert rep.agreement_by_kernels[fam] == recount == 1.0, fam
        np.testing.assert_allclose(logits, sim, rtol=0, atol=1e-4, err_msg=fam)


def test_gap_fed_conv_is_an_int8_conv_and_biases_are_int32(gap_cnn, tmp_path):
    m, x, plan = gap_cnn
    path = str(tmp_path / "cnn3.tflite")
    rep = export_tflite(m, plan, path, representative_data=x[:64])
    model = read_model(path)
    sg = model.subgraphs[0]
    names = [t.name.decode() for t in sg.tensors]
    types = type_names()
    ops = op_names()
    kernel = names.index("c2/kernel")
    (op,) = [o for o in sg.operators if kernel in list(o.inputs)]
    assert ops[model.operatorCodes[op.opcodeIndex].builtinCode] == "CONV_2D"
    x_in, out = sg.tensors[op.inputs[0]], sg.tensors[op.outputs[0]]
    assert types[x_in.type] == "INT8" and types[out.type] == "INT8"
    assert types[sg.tensors[kernel].type] == "INT8"
    # every convolution and fully connected layer of the file is integer
    for o in sg.operators:
        name = ops[model.operatorCodes[o.opcodeIndex].builtinCode]
        if name in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "BATCH_MATMUL"):
            assert types[sg.tensors[o.inputs[0]].type] == "INT8", name
    # no float32 bias anywhere
    biases = [t for t in sg.tensors if t.name.decode().endswith("/bias")]
    assert len(biases) == 3
    assert all(types[t.type] == "INT32" for t in biases)
    assert rep.layer("c2").compute == "int8" and rep.layer("c2").bias_dtype == "int32"
    # the conv's int8 output holds the exact clipped accumulator: read back
    # on the reference kernels, it equals the numpy conv + clip on the grid
    it = Interpreter(model_path=path, experimental_preserve_all_tensors=True)
    it.resize_tensor_input(it.get_input_details()[0]["index"], [16, 12, 12, 3])
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x[:16])
    it.invoke()
    det = it.get_tensor_details()[op.outputs[0]]
    scale, zp = det["quantization"]
    c2_out = (it.get_tensor(op.outputs[0]).astype(np.float64) - zp) * scale
    y = np.clip(sim_layer(m, plan, "c1", x[:16], conv_same), 0, 2)
    y = y.reshape(16, 6, 2, 6, 2, 8).max(axis=(2, 4))
    want = np.clip(sim_layer(m, plan, "c2", y, conv_same), 0, 2)
    # below the clip the kernel output is the raw accumulator; the clip comes
    # from int8 saturation and MINIMUM right after (so compare clipped)
    np.testing.assert_array_equal(np.clip(c2_out, 0, 2), want)


def test_serving_signature_runs_and_matches(gap_cnn, tmp_path):
    m, x, plan = gap_cnn
    path = str(tmp_path / "sig.tflite")
    export_tflite(m, plan, path, representative_data=x[:64])
    it = Interpreter(model_path=path)
    sigs = it.get_signature_list()
    assert list(sigs) == ["serving_default"]
    assert sigs["serving_default"] == {"inputs": [m.input_names[0]],
                                       "outputs": [m.output_names[0]]}
    runner = it.get_signature_runner()          # the default signature
    out = runner(**{m.input_names[0]: x[:7]})
    assert list(out) == [m.output_names[0]]
    logits = out[m.output_names[0]]
    assert logits.shape == (7, 4)
    np.testing.assert_allclose(logits, sim_gap_cnn(m, plan, x[:7]), rtol=0, atol=1e-4)
    np.testing.assert_array_equal(logits, tflite_predict(path, x[:7]))


def test_round_pooled_outputs_trades_exactness_for_an_int8_conv(gap_cnn, tmp_path):
    """At 7 bits the GAP-fed conv's clipped output does not fit int8 codes
    at scale Delta_A*Delta_W, so by default it runs in float32 (exact); with
    round_pooled_outputs it runs as an int8 CONV_2D whose output is rounded
    to a documented step, and the report says it is exact nowhere."""
    m, x, _ = gap_cnn
    import tfprec
    from tfprec.planning.rules import uniform_plan
    plan = uniform_plan(tfprec.noise_gains(m, x[:200]), bits=7)
    exact = export_tflite(m, plan, str(tmp_path / "e.tflite"), representative_data=x,
                          check_examples=500)
    assert exact.layer("c2").compute == "float32"
    assert set(exact.layer("c2").exact_on) == set(FAMILIES)
    path = str(tmp_path / "r.tflite")
    rep = export_tflite(m, plan, path, representative_data=x, check_examples=500,
                        round_pooled_outputs=True)
    c2 = rep.layer("c2")
    assert c2.compute == "int8" and c2.output.startswith("int8 rounded to step")
    assert c2.exact_on == () and rep.exact_on == ()
    assert metadata(path)["layers"]["c2"]["exact_on"] == []
    model = read_model(path)
    sg = model.subgraphs[0]
    kernel = [t.name.decode() for t in sg.tensors].index("c2/kernel")
    (op,) = [o for o in sg.operators if kernel in list(o.inputs)]
    assert op_names()[model.operatorCodes[op.opcodeIndex].builtinCode] == "CONV_2D"
    assert type_names()[sg.tensors[op.outputs[0]].type] == "INT8"
    # the extra rounding is the same on every family; its effect is measured
    sim = sim_gap_cnn(m, plan, x[:500])
    got = decisions_by_family(path, x[:500])
    for fam, logits in got.items():
        assert rep.agreement_by_kernels[fam] == float(
            np.mean(np.argmax(logits, 1) == np.argmax(sim, 1)))
        np.testing.assert_array_equal(logits, got["xnnpack"])
    with pytest.raises(ExportError, match="round_pooled_outputs"):
        export_tflite(m, plan, path, representative_data=x, round_pooled_outputs="yes")


def test_concatenated_branches_run_int8_and_exact(tmp_path):
    """Two conv branches (ReLU6, on an unsigned grid) concatenated into a
    conv: concatenation commutes with rounding, so both branches requantize
    straight onto the consumer's grid and the CONCATENATION is int8."""
    rng = np.random.default_rng(21)
    x = rng.normal(size=(2200, 8, 8, 4)).astype(np.float32)
    keras.utils.set_random_seed(21)
    inp = keras.Input((8, 8, 4), name="img")
    a = L.ReLU(6.0, name="ra")(L.Conv2D(6, 3, padding="same", name="ca")(inp))
    b = L.ReLU(6.0, name="rb")(L.Conv2D(5, 1, name="cb")(inp))
    y = L.Concatenate(name="cat")([a, b])
    y = L.Flatten(name="flat")(L.Conv2D(3, 3, strides=2, padding="same", name="cc")(y))
    m = keras.Model(inp, L.Dense(4, name="out")(y))
    spec = {"cb": (6, 6), "ca": (5, 6), "cc": (6, 6), "out": (6, 7)}   # graph order
    from test_export import make_plan
    plan = make_plan(m, x, spec)
    path = str(tmp_path / "cat.tflite")
    rep = export_tflite(m, plan, path, representative_data=x)
    assert rep.layer("ca").output == "int8 on the input grid of cc (through cat)"
    assert rep.layer("cb").output == "int8 on the input grid of cc (through cat)"
    assert set(rep.exact_on) == set(FAMILIES)
    model = read_model(path)
    sg = model.subgraphs[0]
    (cat,) = [o for o in sg.operators
              if op_names()[model.operatorCodes[o.opcodeIndex].builtinCode] == "CONCATENATION"]
    assert {type_names()[sg.tensors[i].type] for i in list(cat.inputs) + list(cat.outputs)} \
        == {"INT8"}

    def sim(xe):
        qa = np.clip(sim_layer(m, plan, "ca", xe, conv_same), 0, 6)
        qb = np.clip(sim_layer(m, plan, "cb", xe, lambda a_, k, b_: a_ @ k[0, 0] + b_), 0, 6)
        y_ = np.concatenate([qa, qb], axis=-1)
        lp = plan.layer("cc")
        from test_export import q
        k, bias = m.get_layer("cc").get_weights()
        kq = q(k, lp.weight_bits, lp.weight_range, True)
        bq = q(bias, lp.weight_bits, lp.weight_range, True)
        # stride 2, SAME on 8 rows: TF pads 0 before, 1 after: windows centered
        # at the odd rows of the stride-1 convolution
        y_ = conv_same(q(y_, lp.act_bits, lp.act_range, lp.act_signed), kq, bq)[:, 1::2, 1::2]
        return sim_layer(m, plan, "out", y_.reshape(len(xe), -1))

    want = sim(x[:N_CHECK])
    for fam, logits in decisions_by_family(path, x[:N_CHECK]).items():
        np.testing.assert_allclose(logits, want, rtol=0, atol=1e-5, err_msg=fam)
        assert rep.agreement_by_kernels[fam] == 1.0
