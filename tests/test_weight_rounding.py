"""optimize_rounding (GPTQ on the plan's grid) against independent numpy
brute force: the input moments from explicit im2col loops, the levels from
a step-by-step least-squares (Optimal Brain Quantization) update with an
explicit inverse per step, the output errors from the explicit inputs."""
import numpy as np
import pytest

from tfprec._tf import keras

import tfprec
from tfprec import fixedpoint
from tfprec.errors import InvalidDataError, PlanError
from tfprec.quantization import apply
from tfprec.quantization.rounding import (gptq_levels, input_moments,
                                          optimize_rounding)

from reference import randomize

L = keras.layers


def make_net(seed=0):
    """Conv SAME stride 2 + BN, depthwise, conv VALID, flatten, dense,
    dense logits: every kind optimize_rounding handles or leaves alone."""
    keras.utils.set_random_seed(seed)
    i = keras.Input((9, 9, 3))
    h = L.Conv2D(6, 3, strides=2, padding="same", name="c1")(i)
    h = L.BatchNormalization(name="bn1")(h)
    h = L.ReLU(name="r1")(h)
    h = L.DepthwiseConv2D(3, padding="same", activation="relu", name="dw")(h)
    h = L.Conv2D(5, 2, padding="valid", activation="relu", name="c2")(h)
    h = L.Flatten(name="fl")(h)
    h = L.Dense(12, activation="relu", name="d1")(h)
    o = L.Dense(4, name="logits")(h)
    m = keras.Model(i, o, name="net")
    randomize(m, seed)
    return m


def data(n, seed=1):
    rng = np.random.default_rng(seed)
    base = rng.normal(0, 1, (n, 9, 9, 1))           # correlated channels
    return (base + 0.5 * rng.normal(0, 1, (n, 9, 9, 3))).astype(np.float32)


@pytest.fixture(scope="module")
def net():
    m = make_net()
    x = data(96)
    g = tfprec.noise_gains(m, x, per_channel=True)
    return m, x, g


# ------------------------------------------------------------ brute force
def ref_rows(t: np.ndarray, ksize, strides, padding) -> np.ndarray:
    """im2col rows [N * positions, kh * kw * C] of NHWC ``t`` by explicit
    loops over the output positions (TensorFlow SAME / VALID padding)."""
    n, hgt, wid, c = t.shape
    (kh, kw), (sh, sw) = ksize, strides

    def pads(size, k, s):
        if padding == "VALID":
            return 0, 0, (size - k) // s + 1
        out = -(-size // s)
        total = max((out - 1) * s + k - size, 0)
        return total // 2, total - total // 2, out
    pt, pb, oh = pads(hgt, kh, sh)
    pl, pr, ow = pads(wid, kw, sw)
    tp = np.pad(t.astype(np.float64), ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    rows = []
    for e in range(n):
        for a in range(oh):
            for b in range(ow):
                rows.append(tp[e, a * sh:a * sh + kh, b * sw:b * sw + kw, :].reshape(-1))
    return np.array(rows)


def layer_rows(model, x, name):
    """The float inputs of layer ``name`` of the *original* model (BN not
    folded: it follows the conv), as rows."""
    layer = model.get_layer(name)
    t = keras.Model(model.inputs, layer.input).predict(x, verbose=0)
    if isinstance(layer, L.Dense):
        return t.reshape(-1, t.shape[-1]).astype(np.float64)
    return ref_rows(t, layer.kernel_size, layer.strides, layer.padding.upper())


def ref_obq(w, h, steps, bits, damp, narrow=False):
    """Step-by-step Optimal Brain Quantization: fix rows in order of
    decreasing damped H_kk; at each step round the row to nearest (half up,
    saturated) and give the free rows F the least-squares optimum
    w_F += -(w_k - q_k) inv(H_FF)[:, k] / inv(H_FF)[k, k], with inv(H_FF)
    recomputed explicitly every step."""
    w = np.array(w, np.float64)
    h = np.array(h, np.float64)
    d = np.diag(h).copy()
    d[d <= 0] = 1.0
    h[np.diag_indices(len(d))] = d
    h = h + damp * np.mean(d) * np.eye(len(d))
    order = sorted(range(len(d)), key=lambda k: (-h[k, k], k))
    lo, hi = fixedpoint.int_limits(bits, True)
    lo = -hi if narrow else lo
    q = np.zeros_like(w)
    for i, k in enumerate(order):
        free = order[i:]
        hinv = np.linalg.inv(h[np.ix_(free, free)])
        codes = np.clip(np.floor(w[k] / steps + 0.5), lo, hi)
        q[k] = codes * steps
        err = w[k] - q[k]
        w[free] -= np.outer(hinv[:, 0] / hinv[0, 0], err)
        w[k] = q[k]
    return q


# ------------------------------------------------------------------ tests
@pytest.mark.parametrize("bits,per_channel,narrow", [(3, True, False), (4, False, True),
                                                     (6, True, True)])
def test_gptq_levels_equal_step_by_step_least_squares(bits, per_channel, narrow):
    rng = np.random.default_rng(bits)
    k, n = 14, 5
    x = rng.normal(0, 1, (300, 3)) @ rng.normal(0, 1, (3, k)) + 0.3 * rng.normal(0, 1, (300, k))
    x[:, 4] = 0.0                                         # a dead input
    h = x.T @ x / len(x)
    w = rng.normal(0, 0.4, (k, n))
    steps = (2.0 ** rng.integers(-1, 2, n) if per_channel else np.full(n, 1.0)) * 2.0 ** (1 - bits)
    q = gptq_levels(w, h, steps, bits, damp=0.01, narrow=narrow)
    ref = ref_obq(w, h, steps, bits, 0.01, narrow)
    np.testing.assert_allclose(q, ref, rtol=0, atol=1e-12)
    codes = q / steps
    np.testing.assert_array_equal(codes, np.round(codes))
    lo, hi = fixedpoint.int_limits(bits, True)
    assert codes.min() >= (-hi if narrow else lo)
    assert codes.max() <= hi
    # the least-squares choice beats round-to-nearest on these inputs
    near = np.clip(np.floor(w / steps + 0.5), lo, hi) * steps
    assert np.sum((x @ (w - q)) ** 2) < np.sum((x @ (w - near)) ** 2)


def test_input_moments_equal_explicit_im2col(net):
    m, x, _ = net
    mom = input_moments(m, x, batch_size=40)            # 3 batches, one partial
    assert sorted(mom) == ["c1", "c2", "d1", "logits"]    # depthwise not included
    for name, got in mom.items():
        rows = layer_rows(m, x, name)
        assert got.rows == len(rows)
        np.testing.assert_allclose(got.hessian, rows.T @ rows / len(rows),
                                   rtol=1e-5, atol=1e-6 * np.abs(got.hessian).max())
        np.testing.assert_allclose(got.mean, rows.mean(0), rtol=1e-5, atol=1e-6)


def test_rounded_weights_on_grid_errors_and_bias_correction(net):
    m, x, g = net
    before = [w.copy() for w in m.get_weights()]
    plan = tfprec.uniform_plan(g, bits=8).with_bits(
        weight_bits={"c1": 4, "c2": 3, "d1": 4, "logits": 5, "dw": 4})
    r = optimize_rounding(m, plan, x)
    r_plain = optimize_rounding(m, plan, x, bias_correction=False)
    for a, b in zip(before, m.get_weights()):           # the user's model is read only
        np.testing.assert_array_equal(a, b)
    assert r.plan.fingerprint != plan.fingerprint
    assert r.plan.layers == plan.layers
    assert "gptq" in r.plan.info["weight_rounding"]
    assert [l.name for l in r.layers] == plan.names
    assert {l.name: l.method for l in r.layers}["dw"] == "nearest (narrow range)"
    folded = tfprec.fold_batchnorm(m)
    for lr in r.layers:
        if lr.method != "gptq":
            continue
        lp = r.plan.layer(lr.name)
        kernel, bias = r.model.get_layer(lr.name).get_weights()
        w_k, w_b = folded.get_layer(lr.name).get_weights()
        steps = np.asarray(lp.weight_ranges(), np.float64) * 2.0 ** (1 - lp.weight_bits)
        lo, hi = fixedpoint.int_limits(lp.weight_bits, True)
        for v, least in ((kernel, -hi), (bias, lo)):     # kernel codes narrow-range
            c = v.astype(np.float64) / steps
            np.testing.assert_array_equal(c, np.round(c))
            assert c.min() >= least
            assert c.max() <= hi
        rows = layer_rows(m, x, lr.name)
        w = w_k.reshape(-1, w_k.shape[-1]).astype(np.float64)
        q = kernel.reshape(w.shape).astype(np.float64)
        near = np.clip(np.floor(w / steps + 0.5), lo, hi) * steps
        out = np.sum((rows @ w) ** 2)
        np.testing.assert_allclose(lr.error_optimized, np.sum((rows @ (w - q)) ** 2) / out,
                                   rtol=1e-4)
        np.testing.assert_allclose(lr.error_nearest, np.sum((rows @ (w - near)) ** 2) / out,
                                   rtol=1e-4)
        assert lr.error_optimized < lr.error_nearest
        # bias correction: the bias is the folded bias plus the mean output
        # shift of the kernel's rounding, then rounded; so the mean output
        # error is within half a step of 0
        shift = (rows @ (w - q)).mean(0)
        np.testing.assert_array_equal(
            bias, np.clip(np.floor((w_b + shift) / steps + 0.5), lo, hi) * steps)
        assert np.all(np.abs(shift + w_b - bias) <= steps / 2 * (1 + 1e-6) + 1e-6)
        np.testing.assert_array_equal(
            r_plain.model.get_layer(lr.name).get_weights()[1],
            np.clip(np.floor(w_b / steps + 0.5), lo, hi) * steps)


def test_fake_quant_of_rounded_model_is_the_rounded_weights_and_closer_to_float(net):
    m, x, g = net
    plan = tfprec.uniform_plan(g, bits=16).with_bits(
        weight_bits={"c1": 3, "c2": 3, "d1": 3, "logits": 3})
    r = optimize_rounding(m, plan, x[:64])
    q = apply.quantize_model(r.model, r.plan)      # fingerprint matches: no flag needed
    for name in ("c1", "c2", "d1", "logits"):
        got = apply.quantized_weights(q, name)
        for a, b in zip(got, r.model.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
    xe = data(200, seed=7)                           # not the calibration inputs
    zf = m.predict(xe, verbose=0)
    z_near = apply.quantize_model(m, plan).predict(xe, verbose=0)
    z_gptq = q.predict(xe, verbose=0)
    assert np.mean((z_gptq - zf) ** 2) < np.mean((z_near - zf) ** 2)
    # validate(rounded=): float decisions of the user's model, fixed-point
    # ones of the rounded weights
    from tfprec.quantization.validate import validate
    v = validate(m, plan, xe, rounded=r)
    assert v.num_mismatch == int(np.sum(np.argmax(zf, -1) != np.argmax(z_gptq, -1)))
    assert v.method == plan.method
    other = optimize_rounding(m, plan.with_bits(weight_bits={"c1": 4}), x[:64])
    with pytest.raises(PlanError, match="rounded"):
        validate(m, plan, xe, rounded=other)


def test_cache_reuses_levels_and_gives_the_same_model(net):
    m, x, g = net
    mom = input_moments(m, x)
    p4 = tfprec.uniform_plan(g, bits=4)
    cache: dict = {}
    a = optimize_rounding(m, p4, moments=mom, cache=cache)
    n = len(cache)
    assert n == 4
    b = optimize_rounding(m, p4.with_bits(weight_bits={"d1": 5}), moments=mom, cache=cache)
    assert len(cache) == n + 1
    c = optimize_rounding(m, p4.with_bits(weight_bits={"d1": 5}), moments=mom)
    for wb, wc in zip(b.model.get_weights(), c.model.get_weights()):
        np.testing.assert_array_equal(wb, wc)
    assert not np.array_equal(a.model.get_layer("d1").get_weights()[0],
                              b.model.get_layer("d1").get_weights()[0])


def test_bad_arguments_are_named(net):
    m, x, g = net
    plan = tfprec.uniform_plan(g, bits=4)
    with pytest.raises(InvalidDataError, match="calibration inputs"):
        optimize_rounding(m, plan)
    with pytest.raises(InvalidDataError, match="damp"):
        optimize_rounding(m, plan, x, damp=-1.0)
    mom = input_moments(m, x[:8])
    del mom["d1"]
    with pytest.raises(InvalidDataError, match="'d1'"):
        optimize_rounding(m, plan, moments=mom)
    with pytest.raises(InvalidDataError, match="empty"):
        input_moments(m, x[:0])
    other = make_net(seed=3)
    with pytest.raises(PlanError, match="fingerprint"):
        optimize_rounding(other, plan, x)


def test_bias_correction_removes_the_mean_output_shift():
    keras.utils.set_random_seed(4)
    m = keras.Sequential([L.Input((16,)), L.Dense(8, name="d"), L.Dense(3, name="out")])
    randomize(m, 4)
    rng = np.random.default_rng(5)
    x = (3.0 + rng.normal(0, 1, (400, 16))).astype(np.float32)    # mean far from 0
    g = tfprec.noise_gains(m, x)
    plan = tfprec.uniform_plan(g, bits=12).with_bits(weight_bits={"d": 3})
    w, b = m.get_layer("d").get_weights()
    lp = plan.layer("d")
    step = lp.weight_range * 2.0 ** (1 - lp.weight_bits)
    rows = x.astype(np.float64)
    shifts = {}
    for corr in (True, False):
        r = optimize_rounding(m, plan, x, bias_correction=corr)
        q, qb = r.model.get_layer("d").get_weights()
        shifts[corr] = (rows @ (w - q)).mean(0) + (b - qb)     # mean output error
    assert np.all(np.abs(shifts[True]) <= step / 2 + 1e-6)
    assert np.abs(shifts[False]).max() > step              # the shift is real here


def test_range_search_keeps_the_range_with_the_lower_output_error(net):
    from tfprec.quantization.validate import validate
    m, x, g = net
    plan = tfprec.uniform_plan(g, bits=8).with_bits(
        weight_bits={"c1": 4, "c2": 3, "d1": 4, "logits": 4})
    r = optimize_rounding(m, plan, x, range_search=True)
    assert "range search on" in r.plan.info["weight_rounding"]
    folded = tfprec.fold_batchnorm(m)
    halved = 0
    for lr in r.layers:
        old, new = plan.layer(lr.name), r.plan.layer(lr.name)
        assert new.weight_bits == old.weight_bits
        if lr.method != "gptq":
            assert new == old
            continue
        rows = layer_rows(m, x, lr.name)
        h = rows.T @ rows / len(rows)
        w_k, w_b = folded.get_layer(lr.name).get_weights()
        w = w_k.reshape(-1, w_k.shape[-1]).astype(np.float64)
        b = w_b.astype(np.float64)
        bits = old.weight_bits
        lo, hi = fixedpoint.int_limits(bits, True)
        steps = np.asarray(old.weight_channel_ranges) * 2.0 ** (1 - bits)
        errs = []
        for st in (steps, steps / 2):
            q = ref_obq(w, h, st, bits, 0.01, narrow=True)
            qb = np.clip(np.floor((b + rows.mean(0) @ (w - q)) / st + 0.5), lo, hi) * st
            errs.append(np.mean((rows @ (w - q) + b - qb) ** 2, axis=0))
        want = np.where(errs[1] < errs[0], np.asarray(old.weight_channel_ranges) / 2,
                        np.asarray(old.weight_channel_ranges))
        np.testing.assert_array_equal(np.asarray(new.weight_channel_ranges), want)
        assert new.weight_range == want.max()
        halved += int(np.sum(want < np.asarray(old.weight_channel_ranges)))
        kernel, bias = r.model.get_layer(lr.name).get_weights()
        st = want * 2.0 ** (1 - bits)
        for v in (kernel, bias):
            c = v.astype(np.float64) / st
            np.testing.assert_array_equal(c, np.round(c))
            assert c.min() >= lo
            assert c.max() <= hi
    assert halved > 0                       # the search did something here
    r.plan.check()
    assert validate(m, plan, data(100, seed=11), rounded=r).num_examples == 100


@pytest.mark.parametrize("narrow", [True, False])
def test_depthwise_rounded_to_nearest_on_the_narrow_range(narrow):
    """A DepthwiseConv2D is rounded to nearest (GPTQ handles Dense / Conv2D):
    with narrow_range its kernel codes stay >= -(2^(B-1) - 1), so a weight
    just above -R_c takes -7, not -8, at 4 bits (LiteRT stores int8 kernels
    narrow-range); every other value is the plan's nearest level, and the
    fake-quant model keeps them."""
    m = make_net(3)
    dw = m.get_layer("dw")
    k, b = dw.get_weights()                          # [3, 3, 6, 1], [6]
    r0 = 2.0 ** np.ceil(np.log2(max(np.abs(k[..., 0, 0]).max(), abs(b[0]))))
    k[0, 0, 0, 0] = -r0 * (1 - 2.0 ** -6)            # rounds to the code -8
    dw.set_weights([k, b])
    x = data(96)
    g = tfprec.noise_gains(m, x, per_channel=True)
    plan = tfprec.uniform_plan(g, bits=16).with_bits(weight_bits={"dw": 4})
    lp = plan.layer("dw")
    assert lp.weight_channel_ranges[0] == r0
    r = optimize_rounding(m, plan, x[:64], narrow_range=narrow)
    row = next(x for x in r.layers if x.name == "dw")
    assert row.method == ("nearest (narrow range)" if narrow else "nearest")
    steps = np.asarray(lp.weight_channel_ranges) * 2.0 ** (1 - 4)
    want = np.clip(np.floor(k.astype(np.float64) / steps[None, None, :, None] + 0.5), -8, 7)
    if narrow:
        want = np.maximum(want, -7)
    got_k = r.model.get_layer("dw").get_weights()[0].astype(np.float64)
    if narrow:
        np.testing.assert_array_equal(got_k / steps[None, None, :, None], want)
        assert want[0, 0, 0, 0] == -7
    else:                                            # left to the fake-quant rounding
        np.testing.assert_array_equal(got_k, k)
    q = apply.quantize_model(r.model, r.plan)
    np.testing.assert_array_equal(apply.quantized_weights(q, "dw")[0] /
                                  steps[None, None, :, None], want)


def test_examples_needed_counts_rows_per_kernel_row_from_the_layers(net):
    """examples_needed against the Keras layers' own kernel and output
    shapes: the fewest examples with >= 8 input rows per kernel row in
    every Dense / Conv2D layer (depthwise excluded); fewer examples warn
    and name exactly the short layers, enough examples do not warn."""
    import warnings
    from tfprec.errors import TfprecWarning
    from tfprec.quantization.rounding import MIN_ROWS_PER_DOT, examples_needed
    m, x, g = net
    need = {}
    for layer in m.layers:
        if type(layer).__name__ not in ("Dense", "Conv2D"):
            continue
        k = int(np.prod(layer.kernel.shape[:-1]))
        positions = int(np.prod(layer.output_shape[1:-1]))
        need[layer.name] = int(np.ceil(MIN_ROWS_PER_DOT * k / positions))
    assert MIN_ROWS_PER_DOT == 8
    assert need == {"c1": 9, "c2": 12, "d1": 640, "logits": 96}
    assert examples_needed(m) == max(need.values())
    assert examples_needed(m, rows_per_dot=1) == 80
    for bad in (0, -2, 1.5, True):
        with pytest.raises(InvalidDataError, match="rows_per_dot"):
            examples_needed(m, rows_per_dot=bad)
    plan = tfprec.uniform_plan(g, bits=4)
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        optimize_rounding(m, plan, x)                       # 96 examples
    msgs = [str(w.message) for w in got if issubclass(w.category, TfprecWarning)]
    assert len(msgs) == 1
    assert "d1 (96 rows, dot length 80)" in msgs[0]
    for name in ("c1", "c2", "logits"):
        assert f"{name} (" not in msgs[0]
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        optimize_rounding(m, plan, data(examples_needed(m)))
    assert not [w for w in got if issubclass(w.category, TfprecWarning)]
