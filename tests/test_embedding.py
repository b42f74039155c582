"""Embedding layers through the pipeline (issue 10).

Noise gains against the float64 brute force of ``reference.py`` (the table
is a weight tensor, the integer ids have no E_A), the plans of every
planning method (no activation format for the Embedding: ``act_bits`` None,
no bound term, no input cost), the fake-quant model against a numpy
simulation written here (the table rounded to its grid, nothing in front of
the lookup), validation, reports, and the named errors.
"""
from __future__ import annotations

import functools
import json
import math
import warnings

import numpy as np
import pytest

import tfprec
from tfprec._tf import keras
from tfprec.application import tables
from tfprec.errors import InvalidDataError, PlanError, UnsupportedModelError
from tfprec.planning import budget as budget_lib
from tfprec.planning import cost as cost_lib
from tfprec.quantization import apply as apply_lib
from tfprec.quantization import validate as validate_lib

from reference import Reference, clear_margins, randomize

L = keras.layers
N = 10          # calibration examples per model (the reference loops over them)
RTOL = 1e-4     # float32 pass against the float64 reference

pytestmark = pytest.mark.filterwarnings("ignore:noise gains from only")


# ------------------------------------------------------------------ models
def conv_gap():
    """Embedding -> Conv1D -> GlobalAveragePooling1D -> Dense (V=6 < T=8:
    every example repeats ids)."""
    x = L.Input((8,), dtype="int32", name="tokens")
    h = L.Embedding(6, 4, name="emb")(x)
    h = L.Conv1D(5, 3, padding="same", activation="relu", name="c1")(h)
    h = L.GlobalAveragePooling1D(name="gap")(h)
    return keras.Model(x, L.Dense(4, name="fc")(h))


def flat_mlp():
    """Embedding -> Flatten -> Dense -> Dense (V=4 < T=5)."""
    x = L.Input((5,), dtype="int32", name="tokens")
    h = L.Flatten(name="flat")(L.Embedding(4, 3, name="emb")(x))
    h = L.Dense(6, activation="relu", name="d1")(h)
    return keras.Model(x, L.Dense(3, name="d2")(h))


def gap_mlp():
    """Embedding -> GlobalAveragePooling1D -> Dense -> Dense (V=5 < T=7)."""
    x = L.Input((7,), dtype="int32", name="tokens")
    h = L.GlobalAveragePooling1D(name="gap")(L.Embedding(5, 6, name="emb")(x))
    h = L.Dense(6, activation="relu", name="d1")(h)
    return keras.Model(x, L.Dense(4, name="d2")(h))


MODELS = {"conv_gap": (conv_gap, 6), "flat_mlp": (flat_mlp, 4), "gap_mlp": (gap_mlp, 5)}


def _ids(model, n, vocab, seed):
    shape = (n,) + tuple(model.input_shape[1:])
    return np.random.default_rng(seed).integers(0, vocab, shape).astype(np.int32)


@functools.lru_cache(maxsize=None)
def case(name):
    build, vocab = MODELS[name]
    keras.utils.set_random_seed(sorted(MODELS).index(name))
    model = randomize(build(), 200 + sorted(MODELS).index(name))
    ref = Reference(model)
    x = clear_margins(ref, _ids(model, 4 * N, vocab, 11), 0.05)[:N]
    assert len(x) == N, name
    return model, x, ref.gains(x)


def _gains(model, x, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tfprec.TfprecWarning)
        return tfprec.noise_gains(model, x, **kw)


@functools.lru_cache(maxsize=None)
def trained_case():
    """flat_mlp with weights from ``case`` plus 300 examples of calibration
    ids (per_class gains) and 200 held-out ids with labels = float decisions
    shifted on a few examples (so accuracies are not trivially 1)."""
    model, _, _ = case("flat_mlp")
    x = _ids(model, 300, 4, 1)
    g = _gains(model, x, per_class=True)
    xv = _ids(model, 200, 4, 2)
    y = np.argmax(model.predict(xv, verbose=0), axis=1)
    y[:10] = (y[:10] + 1) % 3
    return model, x, g, xv, y


# ------------------------------------------------------------------- gains
@pytest.mark.parametrize("name", sorted(MODELS))
def test_gains_match_reference(name):
    model, x, want = case(name)
    # repeated ids within an example: the table gradient rows add up
    assert all(len(set(r.tolist())) < len(r) for r in x.reshape(len(x), -1))
    got = _gains(model, x, batch_size=4)
    assert sorted(got.names) == sorted(want.layers)
    assert (got.num_examples, got.num_ties) == (want.num_examples, want.num_ties)
    for op, r in want.layers.items():
        assert r.e_w > 0, op
        assert got[op].e_w == pytest.approx(r.e_w, rel=RTOL), (op, "e_w")
        assert got[op].e_a == pytest.approx(r.e_a, rel=RTOL, abs=0.0), (op, "e_a")
    emb = got["emb"]
    assert (emb.has_act, emb.e_a, emb.r_a, emb.act_group) == (False, 0.0, 1.0, "")
    assert all(lg.has_act for lg in got.layers if lg.name != "emb")
    table = model.get_layer("emb").get_weights()[0]
    assert emb.r_w == tfprec.fixedpoint.pow2_ceil(float(np.abs(table).max()))
    assert emb.num_weights == table.size and emb.dot_length == 1


@pytest.mark.slow
def test_gains_float64_and_per_class_rows():
    model, x, want = case("conv_gap")
    got = _gains(model, x, dtype="float64", per_class=True)
    for op, r in want.layers.items():
        assert got[op].e_w == pytest.approx(r.e_w, rel=1e-9), op
    j = got.names.index("emb")
    np.testing.assert_allclose(got.class_w.sum(axis=1), got.example_w, rtol=1e-9)
    assert got.example_w[:, j].mean() == pytest.approx(got["emb"].e_w, rel=1e-12)
    assert not got.example_a[:, j].any() and not got.class_a[:, :, j].any()


def test_repeated_ids_matter():
    """The rule adds the gradient rows of equal ids before the square: a
    model whose ids all repeat has a different E_W from the sum of squared
    rows (the reference agrees with the former, see above)."""
    model, x, want = case("gap_mlp")
    from tfprec.statistics import embedding
    from tfprec._tf import tf
    ids = tf.constant(x.astype(np.float32))
    dy = tf.constant(np.random.default_rng(0).normal(size=(2, N, 7, 6)), tf.float32)
    got = embedding._sq_norms({}, ids, dy).numpy()
    d = dy.numpy()
    brute = np.zeros(N)
    for b in range(N):                 # scatter-add, then the squared norm
        for c in range(2):
            g = np.zeros((5, 6))
            np.add.at(g, x[b], d[c, b])
            brute[b] += np.sum(g ** 2)
    np.testing.assert_allclose(got, brute, rtol=1e-5)
    assert not np.allclose(got, np.sum(d ** 2, axis=(0, 2, 3)), rtol=1e-3)


def test_gains_save_and_load():
    model, x, _ = case("flat_mlp")
    g = _gains(model, x)
    back = tfprec.NoiseGains.from_dict(json.loads(json.dumps(g.to_dict())))
    assert back["emb"].has_act is False and back.layers == g.layers
    d = g.to_dict()
    d["layers"][0]["e_a"] = 1.0
    with pytest.raises(InvalidDataError, match="'emb'.*has_act"):
        tfprec.NoiseGains.from_dict(d)
    d = g.to_dict()
    for ld in d["layers"]:
        del ld["has_act"]                  # gains saved before the field: True
    assert all(lg.has_act for lg in tfprec.NoiseGains.from_dict(d).layers)


# ------------------------------------------------------------------- plans
def _check_plan(plan, gains):
    emb = plan.layer("emb")
    assert emb.act_bits is None and not emb.has_act
    assert emb.act_term == 0.0 and emb.act_step is None
    assert all(l.act_bits is not None for l in plan.layers if l.name != "emb")
    g = gains["emb"]
    want = sum(4.0 ** (1 - l.weight_bits) * gains[l.name].g_w
               + (0.0 if l.act_bits is None else 4.0 ** (1 - l.act_bits) * gains[l.name].g_a)
               for l in plan.layers)
    assert plan.bound() == pytest.approx(want, rel=1e-12)
    cost = plan.cost()
    assert cost.compute["emb"] == 0.0
    assert cost.memory["emb"] == emb.weight_bits * g.num_weights
    assert plan.b_min == min([l.weight_bits for l in plan.layers]
                             + [l.act_bits for l in plan.layers if l.act_bits])
    back = tfprec.PrecisionPlan.from_json(plan.to_json())
    assert back == plan and back.layer("emb").act_bits is None
    assert json.loads(plan.to_json())["layers"][0]["act_bits"] is None


def test_every_planning_method():
    model, x, g, xv, y = trained_case()
    plans = [tfprec.paper_plan(g, 0.05), tfprec.paper_plan(g, b_min=3),
             tfprec.uniform_plan(g, 0.05), tfprec.uniform_plan(g, bits=4),
             tfprec.icml2017_plan(g, 0.05),
             tfprec.cost_aware_plan(g, 0.05, cost="compute"),
             tfprec.cost_aware_plan(g, 0.05, cost="memory"),
             tfprec.cost_aware_plan(g, 0.05, criterion="predicted"),
             tfprec.per_example_cost_aware_plan(g, 0.05),
             budget_lib.cost_aware_at_budget(g, 400.0, cost="memory"),
             budget_lib.predicted_budget_plan(g, 400.0, cost="memory")]
    for p in plans:
        _check_plan(p, g)
        if "predicted" in p.method:         # meets the prediction, not the bound
            assert p.info["predicted_mismatch"] == pytest.approx(
                tfprec.predicted_mismatch(p, g), rel=1e-9)
            assert p.info["predicted_mismatch"] <= (p.target or 1.0) * (1 + 1e-9)
        elif p.method.startswith("cost_aware_pe"):   # the per-example bound
            assert tfprec.per_example_bound(p, g) <= p.target * (1 + 1e-9)
        else:
            assert p.bound() <= (p.target or math.inf) * (1 + 1e-9), p.method
    # the cost-aware plans cost no more than the paper's at the same target
    paper = tfprec.paper_plan(g, 0.05).cost()
    assert plans[5].cost().total_compute <= paper.total_compute
    assert plans[6].cost().total_memory <= paper.total_memory
    assert tfprec.per_example_bound(plans[0], g) <= plans[0].bound()
    assert 0.0 <= tfprec.predicted_mismatch(plans[0], g) <= 1.0


@pytest.mark.slow
def test_calibrate():
    model, x, g, xv, y = trained_case()
    res = tfprec.calibrate.calibrate(model, g, xv, y, target_mismatch=0.05,
                                     methods=("paper",), greedy_budget=1)
    assert res.candidates
    for c in res.candidates:
        _check_plan(c.plan, g)
        assert c.measured_mismatch <= 0.05


@pytest.mark.slow
def test_measured_budget_search():
    model, x, g, xv, y = trained_case()
    plan, evaluations = budget_lib.bisect_budget_plan(model, g, xv, y, tolerance_pp=5.0)
    _check_plan(plan, g)
    assert evaluations >= 1


@pytest.mark.slow
def test_hawq_peer_on_an_embedding_model():
    """The HAWQ-v2 peer: Hessian traces through the table (an IndexedSlices
    gradient) and a plan that gives the Embedding no activation bits."""
    from tfprec.peers import hawq, hessian
    model, x, g, xv, y = trained_case()
    tr = hessian.hessian_trace_sensitivity(model, xv[:64], y[:64], num_samples=4)
    assert tr["emb"] > 0 and tr.activation["emb"] == 0.0
    plan = hawq.hawq_plan(model, g, tr, budget=2 * tfprec.uniform_plan(g, bits=2).cost(
        ).total_compute + 1000)
    _check_plan(plan, g)
    assert plan.layer("emb").act_bits is None


def test_with_bits_and_plan_checks():
    _, _, g, _, _ = trained_case()
    plan = tfprec.paper_plan(g, b_min=4)
    p2 = plan.with_bits(weight_bits={"emb": 6}, act_bits={"d1": 7})
    assert (p2.layer("emb").weight_bits, p2.layer("emb").act_bits) == (6, None)
    assert p2.layer("d1").act_bits == 7
    with pytest.raises(PlanError, match="'emb'.*no activation format"):
        plan.with_bits(act_bits={"emb": 4})
    d = json.loads(plan.to_json())
    d["layers"][0]["g_a"] = 0.5            # null act_bits with a gain: refused
    with pytest.raises(PlanError, match="'emb'.*act_bits is null"):
        tfprec.PrecisionPlan.from_dict(d)
    d = json.loads(plan.to_json())
    d["layers"][0]["act_bits"] = 8         # ids get no input quantizer
    with pytest.raises(PlanError, match="'emb'.*integer token ids"):
        tfprec.quantize_model(trained_case()[0], tfprec.PrecisionPlan.from_dict(d))
    d = json.loads(plan.to_json())
    d["layers"][1]["act_bits"] = None      # a Dense's input needs a format
    with pytest.raises(PlanError, match="'d1'.*act_bits"):
        tfprec.quantize_model(trained_case()[0], tfprec.PrecisionPlan.from_dict(d))


def test_cost_tables_do_not_depend_on_the_id_bits():
    _, _, g, _, _ = trained_case()
    for kind in cost_lib.COST_KINDS:
        tab = cost_lib.cost_tables(g.layers, kind)[0]        # the Embedding
        assert np.all(tab == tab[:, :1])
        assert tab[5, 9] == (0.0 if kind == "compute" else 5 * g["emb"].num_weights)


def test_reports_show_integer_ids():
    _, _, g, _, _ = trained_case()
    plan = tfprec.paper_plan(g, 0.05)
    text = tables.layer_table_text(plan, g)
    md = tables.layer_table_markdown(plan, g)
    assert "integer ids" in text and "integer ids" in md
    row = next(r for r in tables.layer_rows(plan, g) if r["layer"] == "emb")
    assert row["act_bits"] is None and row["compute_cost"] == 0.0
    assert tables.plan_level(tfprec.icml2017_plan(g, 0.05)) >= 2


# -------------------------------------------------------------- fake-quant
def _q(v, bits, r, signed):
    """Round half up to the B-bit grid of range r, saturated (numpy)."""
    d = r * 2.0 ** (1 - bits)
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)
    return np.clip(np.floor(v / d + 0.5), lo, hi) * d


def _simulate_flat_mlp(model, plan, x):
    """The fixed-point flat_mlp in numpy float64: table, kernels and biases
    rounded to B_W bits, the Dense inputs to B_A bits, ids used as they are."""
    w = {l.name: [np.asarray(t, np.float64) for t in l.get_weights()]
         for l in model.layers if l.weights}
    lp = {l.name: l for l in plan.layers}
    qw = lambda n, t: _q(t, lp[n].weight_bits, lp[n].weight_range, True)
    qa = lambda n, t: _q(t, lp[n].act_bits, lp[n].act_range, lp[n].act_signed)
    h = qw("emb", w["emb"][0])[x].reshape(len(x), -1)
    h = np.maximum(qa("d1", h) @ qw("d1", w["d1"][0]) + qw("d1", w["d1"][1]), 0.0)
    return qa("d2", h) @ qw("d2", w["d2"][0]) + qw("d2", w["d2"][1])


@pytest.mark.parametrize("bits", [3, 5])
def test_fake_quant_matches_numpy_simulation(bits):
    model, _, g, xv, _ = trained_case()
    before = [w.copy() for w in model.get_weights()]
    plan = tfprec.paper_plan(g, b_min=bits)
    q = tfprec.quantize_model(model, plan)
    got = tfprec.logits_model(q).predict(xv, verbose=0)
    want = _simulate_flat_mlp(model, plan, xv)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(tfprec.simulate_logits(model, plan, xv), want,
                               rtol=1e-9, atol=1e-9)
    lp = plan.layer("emb")
    table = model.get_layer("emb").get_weights()[0]
    np.testing.assert_array_equal(
        apply_lib.quantized_weights(q, "emb")[0],
        _q(table.astype(np.float64), lp.weight_bits, lp.weight_range, True).astype(np.float32))
    with pytest.raises(UnsupportedModelError, match="no input quantizer.*'emb'"):
        apply_lib.input_quantizer_layer(q, "emb")
    assert apply_lib.input_quantizer_layer(q, "d1") is not None
    assert q.inputs[0].dtype == model.inputs[0].dtype
    # the user's model is unchanged
    for a, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(a, b)
    assert [l.name for l in model.layers] == ["tokens", "emb", "flat", "d1", "d2"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["conv_gap", "gap_mlp"])
def test_fake_quant_matches_simulate_for_conv_and_gap(name):
    model, x, _ = case(name)
    g = _gains(model, x)
    plan = tfprec.paper_plan(g, b_min=4)
    got = tfprec.logits_model(tfprec.quantize_model(model, plan)).predict(x, verbose=0)
    np.testing.assert_allclose(got, tfprec.simulate_logits(model, plan, x),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_validate_and_sweep():
    model, _, g, xv, y = trained_case()
    plan = tfprec.paper_plan(g, b_min=6)
    r = validate_lib.validate(model, plan, xv, y)
    assert r.num_examples == 200 and r.float_accuracy == pytest.approx(0.95)
    assert r.compute_cost == plan.cost().total_compute
    rows = validate_lib.sweep(model, g, xv, y, b_mins=[3, 8])
    assert len(rows) == 6
    # ids given as integral floats are used as ids
    r2 = validate_lib.validate(model, plan, xv.astype(np.float32), y)
    assert r2.num_mismatch == r.num_mismatch


# ------------------------------------------------------------------ errors
def test_ids_out_of_range_are_named():
    model, x, _ = case("flat_mlp")
    plan = tfprec.paper_plan(trained_case()[2], b_min=4)
    bad = x.copy()
    bad[3, 1] = 4
    for run in (lambda: _gains(model, bad),
                lambda: validate_lib.validate(model, plan, bad),
                lambda: tfprec.simulate_logits(model, plan, bad)):
        with pytest.raises(InvalidDataError, match=r"'emb'.*\[0, 4\).*id 4"):
            run()
    bad[3, 1] = -1
    with pytest.raises(InvalidDataError, match=r"'emb'.*id -1"):
        _gains(model, bad)
    frac = x.astype(np.float32)
    frac[2, 0] = 1.5
    with pytest.raises(InvalidDataError, match="non-integ"):
        _gains(model, frac)
    with pytest.raises(InvalidDataError, match="example 2.*non-integral"):
        validate_lib.validate(model, plan, frac)


def test_unsupported_embeddings_are_named():
    x = L.Input((5,), dtype="int32")
    m = keras.Model(x, L.Dense(3)(L.Flatten()(L.Embedding(4, 3, mask_zero=True,
                                                              name="embm")(x))))
    with pytest.raises(UnsupportedModelError, match="'embm'.*mask_zero"):
        _gains(m, np.zeros((4, 5), np.int32))
    x = L.Input((5,))
    ids = L.Lambda(lambda t: keras.backend.cast(t, "int32"), name="cast")(x)
    m = keras.Model(x, L.Dense(3)(L.Flatten()(L.Embedding(4, 3, name="embl")(ids))))
    with pytest.raises(UnsupportedModelError, match="'embl'.*fed directly by a model input"):
        _gains(m, np.zeros((4, 5), np.float32))


def test_no_scale_warning_for_token_ids():
    x = L.Input((3,), dtype="int32")
    m = keras.Model(x, L.Dense(3)(L.Flatten()(L.Embedding(50000, 2, name="e")(x))))
    ids = np.random.default_rng(0).integers(0, 50000, (300, 3)).astype(np.int32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", tfprec.TfprecWarning)
        g = tfprec.noise_gains(m, ids)
    assert g["e"].has_act is False
