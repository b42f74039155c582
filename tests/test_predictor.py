"""The per-class gains, the mismatch predictor and allocation under it.

Brute force: float64 per-example, per-class gradients with tf.GradientTape on
tests/reference.py's independent re-execution of the model (weights and a
private zero perturbation of each layer's input), no tfprec gains code.
"""
import dataclasses
import math

import numpy as np
import pytest

import tfprec
from tfprec._tf import keras, tf
from tfprec.errors import PlanError, UnattainableTargetError
from tfprec.planning import cost_aware as cost_aware_lib
from tfprec.planning import predict
from tfprec.planning.calibrate import calibrate
from tfprec.quantization import simulate

from reference import Reference

L = keras.layers
# tiny calibration sets on purpose
pytestmark = pytest.mark.filterwarnings("ignore:noise gains from only")


def _mlp():
    keras.utils.set_random_seed(11)
    inp = L.Input((6,))
    t = L.Dense(8, activation="relu", name="a")(inp)
    u = L.Add()([L.Dense(6, name="b1")(t), L.Dense(6, name="b2")(t)])   # shared input
    h = L.ReLU(max_value=2.0)(u)
    return keras.Model(inp, L.Dense(5, name="out", bias_initializer="random_normal")(h))


def _conv():
    keras.utils.set_random_seed(12)
    inp = L.Input((6, 6, 2))
    x = L.Conv2D(3, 3, activation="relu", name="c1")(inp)
    x = L.MaxPooling2D(2)(x)
    x = L.Flatten()(x)
    return keras.Model(inp, L.Dense(4, name="out")(x))


def brute_rows(model, x, groups):
    """Per (example, class i != y, layer): ||d(z_i - z_y)/dW||^2 / m^2 and
    the same for the layer's input tensor (readers of one tensor summed);
    margins z_y - z_i.  Returns dicts keyed by (example, class)."""
    ref = Reference(model)
    ref.check_forward(x)
    order = ref.order
    out_w, out_a, margin = {}, {}, {}
    for e in range(len(x)):
        with tf.GradientTape(persistent=True) as tape:
            z = ref.logits(x[e:e + 1])[0]
            zk = [z[k] for k in range(int(z.shape[0]))]
        zn = z.numpy()
        y = int(np.argmax(zn))
        srcs = [[ref.vars[n][0]] + ([ref.vars[n][1]] if ref.vars[n][1] is not None else [])
                for n in order]
        flat = [v for s in srcs for v in s] + [ref.vars[n][2] for n in order]
        grads = [[g.numpy() for g in tape.gradient(
            zk[k], flat, unconnected_gradients=tf.UnconnectedGradients.ZERO)]
            for k in range(len(zk))]
        del tape
        for i in range(len(zk)):
            if i == y:
                continue
            d = zn[i] - zn[y]
            g = [gi - gy for gi, gy in zip(grads[i], grads[y])]
            pos, sw = 0, []
            for s in srcs:
                sw.append(sum(float(np.sum(g[pos + j] ** 2)) for j in range(len(s))))
                pos += len(s)
            pert = dict(zip(order, g[pos:]))
            sa = [float(np.sum(sum(pert[m] for m in groups.get(n, [n])) ** 2))
                  for n in order]
            out_w[e, i] = np.array(sw) / d ** 2
            out_a[e, i] = np.array(sa) / d ** 2
            margin[e, i] = -d
    return out_w, out_a, margin


def _groups(gains):
    return {l.name: l.act_group.split("+") for l in gains.layers if l.act_group}


@pytest.fixture(scope="module")
def mlp_case():
    m = _mlp()
    x = np.random.default_rng(3).normal(size=(12, 6)).astype(np.float32)
    g = tfprec.noise_gains(m, x, per_class=True, batch_size=5, class_chunk=3)
    return m, x, g


@pytest.mark.parametrize("make,shape,chunk", [(_mlp, (6,), 3), (_conv, (6, 6, 2), None)])
def test_per_class_rows_match_brute_force(make, shape, chunk):
    m = make()
    x = np.random.default_rng(4).uniform(0, 1, size=(7, *shape)).astype(np.float32)
    g = tfprec.noise_gains(m, x, per_class=True, batch_size=4, class_chunk=chunk)
    bw, ba, mg = brute_rows(m, x.astype(np.float64), _groups(g))
    n, k, nl = g.class_w.shape
    assert (n, k, nl) == (7, m.outputs[0].shape[-1] - 1, len(g.layers))
    assert g.class_a.shape == g.class_w.shape and g.class_margin.shape == (n, k)
    got_w = np.stack([[g.class_w[e, r] * 24 for r in range(k)] for e in range(n)])
    want_w = np.stack([[bw[e, g.class_index[e, r]] for r in range(k)] for e in range(n)])
    want_a = np.stack([[ba[e, g.class_index[e, r]] for r in range(k)] for e in range(n)])
    np.testing.assert_allclose(got_w, want_w, rtol=1e-4, atol=1e-9 * want_w.max())
    np.testing.assert_allclose(g.class_a * 24, want_a, rtol=1e-4,
                               atol=1e-9 * want_a.max())
    want_m = np.array([[mg[e, g.class_index[e, r]] for r in range(k)] for e in range(n)])
    np.testing.assert_allclose(g.class_margin, want_m, rtol=1e-5)
    # summed over the classes they are the per-example gains, and E_T their mean
    np.testing.assert_allclose(g.class_w.sum(1), g.example_w, rtol=1e-5)
    np.testing.assert_allclose(g.class_w.sum(1).mean(0), [l.e_w for l in g.layers],
                               rtol=1e-5)


def test_top_k_keeps_the_closest_classes(mlp_case):
    m, x, g = mlp_case
    gk = tfprec.noise_gains(m, x, per_class=True, top_k=2, batch_size=5)
    assert gk.class_w.shape == (12, 2, 4)
    order = np.argsort(g.class_margin, axis=1)[:, :2]
    for e in range(12):
        want = g.class_index[e, order[e]]
        assert sorted(gk.class_index[e]) == sorted(want)
        for r in range(2):
            j = list(g.class_index[e]).index(gk.class_index[e, r])
            np.testing.assert_allclose(gk.class_w[e, r], g.class_w[e, j], rtol=1e-5)


def _phi(t):
    return 0.5 * math.erfc(-t / math.sqrt(2.0))


def test_predicted_mismatch_by_hand(mlp_case):
    m, x, g = mlp_case
    bw, ba, _ = brute_rows(m, x.astype(np.float64), _groups(g))
    lead = {l.name: (l.act_group.split("+")[0] if l.act_group else l.name)
            for l in g.layers}
    for b_min in (3, 5):
        plan = tfprec.paper_plan(g, b_min=b_min)
        ind, uni = [], []
        for e in range(len(x)):
            probs = []
            for (e2, i), sw in bw.items():
                if e2 != e:
                    continue
                var = 0.0                   # sigma^2 / m^2
                for j, l in enumerate(plan.layers):
                    var += l.weight_step ** 2 / 12 * sw[j]
                    if lead[l.name] == l.name:          # a shared tensor once
                        var += l.act_step ** 2 / 12 * ba[e, i][j]
                probs.append(_phi(-1.0 / math.sqrt(var)))
            ind.append(1 - np.prod([1 - p for p in probs]))
            uni.append(min(1.0, sum(probs)))
        got = predict.predicted_mismatch(plan, g, model="gaussian")
        assert got == pytest.approx(np.mean(ind), rel=1e-4)
        assert predict.predicted_mismatch(plan, g, form="union",
                                          model="gaussian") == pytest.approx(
            np.mean(uni), rel=1e-4)
        assert 0 < got <= cost_aware_lib.per_example_bound(plan, g) <= plan.bound()


def test_prediction_against_monte_carlo():
    """Gaussian noise of variance Delta^2/12 on every weight and input
    activation of a tiny MLP: the flip rate over many draws."""
    keras.utils.set_random_seed(21)
    inp = L.Input((5,))
    h = L.Dense(16, activation="relu", name="h")(inp)
    m = keras.Model(inp, L.Dense(4, name="out")(h))
    x = np.random.default_rng(5).normal(size=(60, 5))
    g = tfprec.noise_gains(m, x, dtype="float64", per_class=True)
    (w1, b1), (w2, b2) = (l.get_weights() for l in m.layers[1:])
    z0 = np.maximum(x @ w1 + b1, 0) @ w2 + b2
    y = z0.argmax(1)
    rng = np.random.default_rng(6)
    for b in (4, 6):
        plan = tfprec.uniform_plan(g, bits=b)
        sa = [l.act_step / math.sqrt(12) for l in plan.layers]
        sw = [l.weight_step / math.sqrt(12) for l in plan.layers]
        flips = []
        for _ in range(20):                     # 20 x 200 draws
            d = 200
            nw = lambda a, s: a + rng.normal(0, s, size=(d, *a.shape))
            x1 = x[None] + rng.normal(0, sa[0], size=(d, *x.shape))
            a1 = np.maximum(x1 @ nw(w1, sw[0]) + nw(b1, sw[0])[:, None], 0)
            a1 = a1 + rng.normal(0, sa[1], size=a1.shape)
            z = a1 @ nw(w2, sw[1]) + nw(b2, sw[1])[:, None]
            flips.append(np.mean(z.argmax(2) != y[None]))
        mc = float(np.mean(flips))
        pred = predict.predicted_mismatch(plan, g, model="gaussian")
        assert mc > 0.002
        assert 0.7 < pred / mc < 1.4, (b, pred, mc)


def _quantize_np(w, bits, r):
    """Signed B-bit rounding on [-r, r), numpy only (independent of tfprec)."""
    d = r * 2.0 ** (1 - bits)
    return np.clip(np.floor(w / d + 0.5), -2 ** (bits - 1), 2 ** (bits - 1) - 1) * d



def _noise_by_hand(a0, a1):
    """Per weight layer: the mean over examples of sum((a1 - a0)^2) over the
    layer input's values / its number of nonzero values in a0 (at least
    1), float64, from lists of the inputs [N, ...] before and after."""
    out = []
    for u, v in zip(a0, a1):
        u = np.asarray(u, np.float64).reshape(len(u), -1)
        v = np.asarray(v, np.float64).reshape(len(v), -1)
        nz = np.maximum(np.count_nonzero(u, axis=1), 1)
        out.append(np.mean(((v - u) ** 2).sum(1) / nz))
    return np.array(out)


def _check_noise(got, want, what):
    """input_noise rows against :func:`_noise_by_hand` (float32 pass)."""
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=1e-7 * want.max() + 1e-14,
                               err_msg=what)


def _check_beyond_tables(shift, noise):
    """Above 10 bits (TABLE_MAX_BITS) a shift table is 0 and the input
    noise continues the 10-bit entry, a quarter per bit."""
    from tfprec.statistics.shifts import TABLE_MAX_BITS
    assert TABLE_MAX_BITS == 10
    np.testing.assert_array_equal(shift[9:], 0.0)
    np.testing.assert_allclose(noise[9:], noise[8][None] * 4.0 ** -np.arange(
        1, 7)[:, None], rtol=1e-12)


def _kept_margins(g, z0):
    """z -> margins z_y - z_i [N, K] of the gains' kept classes, y the float
    decision of logits ``z0``."""
    y = z0.argmax(1)
    n = len(z0)
    rows = np.arange(n)[:, None]
    return lambda z: z[np.arange(n), y][:, None] - z[rows, g.class_index]

@pytest.mark.parametrize("make,shape", [(_mlp, (6,)), (_conv, (6, 6, 2))])
@pytest.mark.parametrize("stacked,per_channel", [(True, False), (False, False), (True, True)],
                         ids=["stacked", "one_copy", "per_channel"])
def test_shift_tables_match_brute_force(make, shape, stacked, per_channel, monkeypatch):
    """class_shift[T, b-2]: the margin change when only layer T's weights are
    rounded to b bits, against the Keras model with those weights set; the
    rounded copies re-run downstream stacked along the batch axis (the other
    branch of the Add tiled) or one at a time (SHIFT_ELEMENTS = 1); with
    per-channel ranges, each output channel rounded on its own range."""
    from tfprec.statistics import shifts
    if not stacked:
        monkeypatch.setattr(shifts, "SHIFT_ELEMENTS", 1)
    m = make()
    if per_channel:                     # channels of different ranges
        for layer in m.layers:
            if layer.get_weights():
                k, bias = layer.get_weights()
                f = 2.0 ** -(np.arange(k.shape[-1]) % 3)
                layer.set_weights([k * f, bias * f])
    x = np.random.default_rng(9).uniform(0, 1, size=(9, *shape)).astype(np.float32)
    g = tfprec.noise_gains(m, x, per_class=True, batch_size=4, class_chunk=2,
                           per_channel=per_channel)
    n, k, nl = g.class_w.shape
    assert g.class_shift.shape == (nl, 15, n, k)
    z0 = m(x).numpy().astype(np.float64)
    margins = _kept_margins(g, z0)
    assert g.input_noise.shape == (2, nl, 15, nl)
    probe = keras.Model(m.inputs, [m.get_layer(lg.name).input for lg in g.layers])
    a0 = probe(x)

    for t, lg in enumerate(g.layers):
        layer = m.get_layer(lg.name)
        w = layer.get_weights()
        r = 2.0 ** math.ceil(math.log2(max(np.abs(a).max() for a in w)))
        assert r == lg.r_w
        if per_channel:                 # kernel [..., C] and bias [C] here
            c = w[-1].size
            mc = np.maximum(np.abs(w[0]).reshape(-1, c).max(0), np.abs(w[1]))
            r = 2.0 ** np.ceil(np.log2(mc))
            np.testing.assert_array_equal(lg.r_w_channels, r)
            assert len(set(r)) > 1
        for b in (2, 3, 6, 10):
            layer.set_weights([_quantize_np(a.astype(np.float64), b, r).astype(np.float32)
                               for a in w])
            want = margins(m(x).numpy().astype(np.float64)) - margins(z0)
            moved = _noise_by_hand(a0, probe(x))
            layer.set_weights(w)
            _check_noise(g.input_noise[0, t, b - 2], moved,
                         f"input noise of layer {lg.name}'s weights at {b} bits")
            assert moved[t] == 0.0                  # not downstream of itself
            np.testing.assert_allclose(g.class_shift[t, b - 2], want, rtol=1e-3,
                                       atol=2e-6 * (1 + np.abs(z0).max()),
                                       err_msg=f"layer {lg.name} at {b} bits")
        _check_beyond_tables(g.class_shift[t], g.input_noise[0, t])
        assert np.abs(g.class_shift[t, 0]).max() > 1e-3      # 2 bits moves margins
    assert g.input_noise[0, 0, 0].max() > 0       # the first layer moves the others



class _RoundInput(L.Layer):
    """Calls ``inner`` on its input rounded to a B-bit format (float64
    round half up, saturated; independent of tfprec's quantizers)."""

    def __init__(self, inner, bits, r, signed):
        super().__init__(name=inner.name + "_rq")
        self.inner, self.bits, self.r, self.signed = inner, bits, r, signed

    def call(self, x):
        if self.bits is None:                   # pass-through
            return self.inner(x)
        d = self.r * 2.0 ** (1 - self.bits)
        lo, hi = ((-2 ** (self.bits - 1), 2 ** (self.bits - 1) - 1) if self.signed
                  else (0, 2 ** self.bits - 1))
        k = tf.clip_by_value(tf.floor(tf.cast(x, tf.float64) / d + 0.5), lo, hi)
        return self.inner(tf.cast(k * d, x.dtype))


@pytest.mark.parametrize("make,shape", [(_mlp, (6,)), (_conv, (6, 6, 2))])
@pytest.mark.parametrize("stacked", [True, False], ids=["stacked", "one_copy"])
def test_act_shift_tables_match_brute_force(make, shape, stacked, monkeypatch):
    """class_act_shift[T, b-2]: the margin change when only layer T's input
    is rounded to b bits on its format (R_A, signed), against a clone of the
    Keras model whose readers of that tensor round it first; a tensor read
    by two layers (b1, b2) is one quantizer: its first reader holds the
    row, the other's is 0."""
    from tfprec.statistics import shifts
    if not stacked:
        monkeypatch.setattr(shifts, "SHIFT_ELEMENTS", 1)
    m = make()
    x = np.random.default_rng(19).uniform(-0.5, 1, size=(9, *shape)).astype(np.float32)
    g = tfprec.noise_gains(m, x, per_class=True, batch_size=4, class_chunk=2)
    n, k, nl = g.class_w.shape
    assert g.class_act_shift.shape == (nl, 15, n, k)
    z0 = m(x).numpy().astype(np.float64)
    margins = _kept_margins(g, z0)
    names = [lg.name for lg in g.layers]
    a0 = keras.Model(m.inputs, [m.get_layer(name).input for name in names])(x)

    seen = set()
    for t, lg in enumerate(g.layers):
        if lg.act_group and lg.act_group in seen:          # a later reader
            np.testing.assert_array_equal(g.class_act_shift[t], 0.0)
            np.testing.assert_array_equal(g.input_noise[1, t], 0.0)
            continue
        seen.add(lg.act_group)
        readers = lg.act_group.split("+") if lg.act_group else [lg.name]
        for b in (2, 3, 7, 10):
            q = keras.models.clone_model(m, clone_function=lambda layer: (
                _RoundInput(layer, b if layer.name in readers else None, lg.r_a,
                            lg.act_signed) if layer.name in names else layer))
            want = margins(q(x).numpy().astype(np.float64)) - margins(z0)
            moved = _noise_by_hand(a0, keras.Model(q.inputs, [
                q.get_layer(name + "_rq").input for name in names])(x))
            _check_noise(g.input_noise[1, t, b - 2], moved,
                         f"input noise of layer {lg.name}'s input at {b} bits")
            assert moved[t] == 0.0                  # not downstream of itself
            np.testing.assert_allclose(g.class_act_shift[t, b - 2], want, rtol=1e-3,
                                       atol=2e-6 * (1 + np.abs(z0).max()),
                                       err_msg=f"layer {lg.name} input at {b} bits")
        _check_beyond_tables(g.class_act_shift[t], g.input_noise[1, t])
        assert np.abs(g.class_act_shift[t, 0]).max() > 1e-3      # 2 bits moves margins
    assert g.input_noise[1, 0, 0].max() > 0
    if make is _mlp:
        assert "b1+b2" in seen


def test_per_class_refuses_data_that_change_between_reads():
    """per_class reads the data twice (activation ranges first): a dataset
    that yields other values the second time is refused, naming the layer."""
    m = _mlp()
    reads = []

    def gen():
        reads.append(1)
        rng = np.random.default_rng(3)
        for _ in range(12):
            yield (rng.uniform(0, 1, 6) * (8.0 if len(reads) > 1 else 1.0)).astype(np.float32)
    ds = tf.data.Dataset.from_generator(gen, output_signature=tf.TensorSpec((6,), tf.float32))
    with pytest.raises(tfprec.InvalidDataError, match="layer 'a'.*changed between two reads"):
        tfprec.noise_gains(m, ds, per_class=True, batch_size=4)
    assert len(reads) == 2

def test_grid_index_at_a_predicted_target(mlp_case):
    """FamilyGrid.index_at: the cheapest predicted-family level whose target
    is at most the value (0 below every level); integer families refuse."""
    from tfprec.peers import matched
    m, x, g = mlp_case
    grid = matched.family_grid(g, "cost_aware_predicted", per_bit=2)
    lv = np.array(grid.levels)
    assert np.all(np.diff(lv) >= 0)
    for v in (0.0, lv[0] / 2, lv[3], 0.5 * (lv[5] + lv[6]), 1.0):
        want = max([0] + [i for i in range(len(lv)) if lv[i] <= v])
        assert grid.index_at(v) == want
    assert grid.index_at(1.0) == len(lv) - 1
    with pytest.raises(PlanError, match="integer levels"):
        matched.family_grid(g, "uniform").index_at(0.01)


def test_grid_of_predicted_accuracy_drops(mlp_case):
    """family_grid(..., labels): targets are the predicted accuracy drops of
    the uniform plans (running max, floored), and each level's plan meets
    its target under that criterion; labels only for the predicted family."""
    from tfprec.peers import matched
    m, x, g = mlp_case
    dec = m(x).numpy().argmax(1)
    labels = dec.copy()
    labels[::4] = (dec[::4] + 2) % 5
    grid = matched.family_grid(g, "cost_aware_predicted", labels=labels)
    assert grid.criterion == "predicted_drop" and len(grid.levels) == 15
    lv = np.array(grid.levels)
    assert np.all(lv > 0) and np.all(np.diff(lv) >= 0)
    for i in (10, 12, 14):
        u = tfprec.uniform_plan(g, bits=16 - i)
        want = max(0.0, predict.predicted_accuracy_drop(u, g, labels))
        assert lv[i] >= want * (1 + 1e-10) - 1e-300
        p = grid.plan(i)
        assert predict.predicted_accuracy_drop(p, g, labels) <= lv[i] * (1 + 1e-6)
    with pytest.raises(PlanError, match="labels are for the cost_aware_predicted"):
        matched.family_grid(g, "uniform", labels=labels)


def test_target_grid_around_a_target(mlp_case):
    """matched.target_grid: quarter-octave targets around the target, most
    precise first, start at the target; each plan meets its own level
    (predicted accuracy drop with labels, else predicted mismatch)."""
    from tfprec.peers import matched
    m, x, g = mlp_case
    dec = m(x).numpy().argmax(1)
    labels = dec.copy()
    labels[::4] = (dec[::4] + 2) % 5
    for lab, value in ((labels, lambda p: predict.predicted_accuracy_drop(p, g, labels)),
                       (None, lambda p: predict.predicted_mismatch(p, g))):
        grid = matched.target_grid(g, 0.05, labels=lab, per_octave=4, octaves_below=2,
                                   octaves_above=1)
        assert grid.criterion == ("predicted_drop" if lab is not None else "predicted")
        assert len(grid.levels) == 13 and grid.levels[grid.start] == pytest.approx(0.05)
        np.testing.assert_allclose(np.diff(np.log2(grid.levels)), 0.25)
        for i in (0, grid.start, 12):
            assert value(grid.plan(i)) <= grid.levels[i] * (1 + 1e-6)
        costs = [grid.plan(i).cost().total_compute for i in (0, grid.start, 12)]
        assert costs[0] >= costs[2]
    for bad in (0.0, 1.0, -0.1, True, "0.1"):
        with pytest.raises(PlanError, match="target must be a probability"):
            matched.target_grid(g, bad)
    with pytest.raises(PlanError, match="labels"):
        matched.target_grid(g, 0.05, labels=labels[:-1])


def test_flip_probability_counts_far_classes_as_zero():
    """flip_from_z: classes with z >= 8.5 add nothing (< 1e-17 each); the
    nearer ones exactly as 1 - prod Phi(z) / min(1, sum Phi(-z))."""
    z = np.array([[0.3, 2.0, 8.4, 8.6, np.inf], [9.0, 12.0, np.inf, 30.0, 8.5],
                  [-1.0, -np.inf, 0.0, 1.0, 40.0]])
    near = np.where(z < 8.5, z, np.inf)
    ind = 1 - np.prod([[_phi(v) for v in row] for row in near], axis=1)
    uni = np.minimum(1.0, np.sum([[_phi(-v) for v in row] for row in near], axis=1))
    np.testing.assert_allclose(predict.flip_from_z(z), ind, rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(predict.flip_from_z(z, "union"), uni, rtol=1e-12,
                               atol=1e-300)
    assert predict.flip_from_z(z)[1] == 0.0
    full = 1 - np.prod([[_phi(v) for v in row] for row in z], axis=1)
    np.testing.assert_allclose(predict.flip_from_z(z), full, rtol=0, atol=1e-16)


def _z_by_hand(plan, g, bw_rows, ba_rows):
    """Per example, {class i: z_i} of the shift model straight from its
    formula: z_i = (m + mu) / sigma, mu the plan's tabulated weight shifts
    plus rho_l x its activation shifts (a shared input once), sigma^2 =
    sum over input tensors (a shared one once) of (1 - rho_l^2) Delta_A^2 /
    12 ||d(z_i - z_y)/dA||^2 (brute force), rho_l the gains' coherence
    table at B_A and the spread nu_l / Delta_l (linear between the
    spreads, the last above them), with nu_l^2 the input-noise entries of
    every tensor's bits at layer l."""
    from tfprec.statistics.shifts import COHERENCE_SPREADS
    lead = {l.name: (l.act_group.split("+")[0] if l.act_group else l.name)
            for l in g.layers}
    rho = []
    for t, l in enumerate(plan.layers):
        nu2 = sum(g.input_noise[0, j, p.weight_bits - 2, t]
                  + g.input_noise[1, j, p.act_bits - 2, t]
                  for j, p in enumerate(plan.layers))
        row = g.act_coherence[t, min(l.act_bits, 10) - 2]
        rho.append(min(1.0, max(0.0, float(np.interp(math.sqrt(nu2) / l.act_step,
                                                     COHERENCE_SPREADS, row)))))
    tabled = lambda bits: bits <= 10          # wider: Gaussian, no table
    out = []
    for e in range(g.num_examples):
        z = {}
        for r, i in enumerate(g.class_index[e]):
            mrg = g.class_margin[e, r]
            mu = sum(g.class_shift[j, l.weight_bits - 2, e, r]
                     for j, l in enumerate(plan.layers))
            mu += sum(rho[j] * g.class_act_shift[j, l.act_bits - 2, e, r]
                      for j, l in enumerate(plan.layers)
                      if lead[l.name] == l.name and tabled(l.act_bits))
            var = sum((1 - rho[j] ** 2 if tabled(l.act_bits) else 1.0)
                      * l.act_step ** 2 / 12 * ba_rows[e, i][j] * mrg ** 2
                      for j, l in enumerate(plan.layers) if lead[l.name] == l.name)
            var += sum(l.weight_step ** 2 / 12 * bw_rows[e, i][j] * mrg ** 2
                       for j, l in enumerate(plan.layers) if not tabled(l.weight_bits))
            z[int(i)] = ((mrg + mu) / math.sqrt(var) if var > 0
                         else math.copysign(math.inf, mrg + mu))
        out.append(z)
    return out


def _shift_by_hand(plan, g, bw_rows, ba_rows, form):
    """The shift model's predicted mismatch from its formula: per (example,
    class) flip probability Phi(-z_i) (:func:`_z_by_hand`), combined by
    ``form``, averaged."""
    out = []
    for z in _z_by_hand(plan, g, bw_rows, ba_rows):
        probs = [_phi(-v) for v in z.values()]
        out.append(min(1.0, sum(probs)) if form == "union"
                   else 1 - np.prod([1 - p for p in probs]))
    return float(np.mean(out))


def test_shift_prediction_by_hand(mlp_case):
    m, x, g = mlp_case
    bw_rows, ba_rows, _ = brute_rows(m, x.astype(np.float64), _groups(g))
    seen, rhos = [], []
    mixed = tfprec.uniform_plan(g, bits=3).with_bits(     # fine weights, first input
        weight_bits={n: 10 for n in g.names}, act_bits={"a": 7})
    wide = tfprec.uniform_plan(g, bits=3).with_bits(      # bits beyond the tables
        weight_bits={"a": 11, "b1": 10, "b2": 12, "out": 3}, act_bits={"a": 12, "out": 11})
    for plan in (tfprec.paper_plan(g, b_min=2), tfprec.uniform_plan(g, bits=3),
                 tfprec.uniform_plan(g, bits=2), mixed, wide):
        rhos.extend(predict._model(g, "independent").factors(*predict._bits_of(plan))[0])
        for form in ("independent", "union"):
            want = _shift_by_hand(plan, g, bw_rows, ba_rows, form)
            got = predict.predicted_mismatch(plan, g, form=form)
            assert got == pytest.approx(want, rel=1e-5, abs=1e-12), (plan.method, form)
            seen.append(got)
    assert max(seen) > 1e-3        # the levels exercise the flips
    rhos = np.array(rhos)          # ... and coherence factors strictly inside (0, 1)
    assert np.any((rhos > 0.5) & (rhos < 0.99))
    assert np.any((rhos > 1e-3) & (rhos < 0.5))


def _drop_by_hand(plan, g, bw_rows, ba_rows, labels, decisions, count_gains):
    """The predicted accuracy drop from its formula: per example and kept
    class z_i = (m_i + mu_i) / sigma_i (brute-force sigma); a right example
    loses its answer with 1 - prod Phi(z_i), a wrong one gains it with
    Phi(-z_t) prod_{i != t} Phi(z_i) (t: the true class); mean of losses
    minus gains."""
    out = []
    for e, z in enumerate(_z_by_hand(plan, g, bw_rows, ba_rows)):
        if decisions[e] == labels[e]:
            out.append(1 - np.prod([_phi(v) for v in z.values()]))
        elif not count_gains:
            out.append(0.0)
        else:
            t = int(labels[e])
            out.append(-_phi(-z[t]) * np.prod([_phi(v) for i, v in z.items() if i != t]))
    return float(np.mean(out))


def test_predicted_accuracy_drop_by_hand(mlp_case):
    """predicted_accuracy_drop against its formula on brute-force rows, with
    labels that make some float decisions right and some wrong; the search
    model's moves agree with its value; a plan for a drop target meets it."""
    m, x, g = mlp_case
    bw_rows, ba_rows, _ = brute_rows(m, x.astype(np.float64), _groups(g))
    dec = m(x).numpy().argmax(1)
    labels = dec.copy()
    labels[::3] = (dec[::3] + 1) % 5                    # a third of them wrong
    assert predict.label_columns(g, labels).tolist() == [
        -2 if d == t else list(g.class_index[e]).index(t)
        for e, (d, t) in enumerate(zip(dec, labels))]
    seen = []
    for plan in (tfprec.uniform_plan(g, bits=3), tfprec.uniform_plan(g, bits=2),
                 tfprec.paper_plan(g, b_min=2)):
        for gains_too in (False, True):
            want = _drop_by_hand(plan, g, bw_rows, ba_rows, labels, dec, gains_too)
            got = predict.predicted_accuracy_drop(plan, g, labels, count_gains=gains_too)
            assert got == pytest.approx(want, rel=1e-6, abs=1e-12), plan.method
            seen.append(got)
        assert (predict.predicted_accuracy_drop(plan, g, labels, count_gains=True)
                <= predict.predicted_accuracy_drop(plan, g, labels)
                <= predict.predicted_mismatch(plan, g) + 1e-15)
    assert max(seen) > 1e-3 and any(b < a for a, b in zip(seen[::2], seen[1::2]))
    # every label right: the drop is the mismatch
    plan = tfprec.uniform_plan(g, bits=2)
    assert predict.predicted_accuracy_drop(plan, g, dec) == pytest.approx(
        predict.predicted_mismatch(plan, g), rel=1e-12)
    for gains_too in (False, True):
        model = predict._model(g, "independent", "shift", labels, gains_too)
        _check_moves(model, np.array([3, 2, 3, 4]), np.array([3, 3, 3, 2]))
    t = 0.5 * predict.predicted_accuracy_drop(tfprec.uniform_plan(g, bits=2), g, labels)
    if t > 0:
        p = cost_aware_lib.cost_aware_plan(g, t, criterion="predicted", labels=labels)
        assert predict.predicted_accuracy_drop(p, g, labels) <= t * (1 + 1e-6)
        assert p.info["predicted_accuracy_drop"] == pytest.approx(
            predict.predicted_accuracy_drop(p, g, labels), rel=1e-9)
    for bad in (labels[:-1], labels + 0.5, np.full(len(labels), 7), None):
        with pytest.raises(PlanError, match="labels|class ids"):
            predict.predicted_accuracy_drop(plan, g, bad)
    with pytest.raises(PlanError, match="labels are for criterion='predicted'"):
        cost_aware_lib.cost_aware_plan(g, 0.01, labels=labels)


def _softmax_drop_by_hand(plan, g, bw_rows, ba_rows, probs, form):
    """The label-free expected drop from its formula: per example, the flip
    probability (1 - prod Phi(z_i), or min(1, sum Phi(-z_i))) shared among
    the classes in proportion to Phi(-z_i), each share weighted by
    p_y - p_i of the float softmax ``probs``; mean over examples."""
    out = []
    for e, z in enumerate(_z_by_hand(plan, g, bw_rows, ba_rows)):
        y = int(np.argmax(probs[e]))
        q = {i: _phi(-v) for i, v in z.items()}
        tot = sum(q.values())
        flip = (min(1.0, tot) if form == "union"
                else 1 - np.prod([_phi(v) for v in z.values()]))
        out.append(0.0 if tot == 0 else
                   sum(flip * q[i] / tot * (probs[e, y] - probs[e, i]) for i in z))
    return float(np.mean(out))


def test_softmax_expected_drop_by_hand(mlp_case):
    """labels=SOFTMAX: the weights are p_y - p_i of the model's own float64
    softmax; the expected drop matches its formula on brute-force rows in
    both forms; the search model's moves agree with its value; plans for a
    target and for a budget use it."""
    m, x, g = mlp_case
    bw_rows, ba_rows, _ = brute_rows(m, x.astype(np.float64), _groups(g))
    logits = m(x).numpy().astype(np.float64)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    dec = probs.argmax(1)
    want_w = probs[np.arange(len(x)), dec][:, None] - np.take_along_axis(
        probs, np.asarray(g.class_index), 1)
    np.testing.assert_allclose(predict.softmax_weights(g), want_w, rtol=1e-5, atol=1e-7)
    assert predict.label_columns(g, predict.SOFTMAX) is None
    seen = []
    for plan in (tfprec.uniform_plan(g, bits=3), tfprec.uniform_plan(g, bits=2),
                 tfprec.paper_plan(g, b_min=2)):
        for form in ("independent", "union"):
            want = _softmax_drop_by_hand(plan, g, bw_rows, ba_rows, probs, form)
            got = predict.predicted_accuracy_drop(plan, g, predict.SOFTMAX, form=form)
            assert got == pytest.approx(want, rel=1e-5, abs=1e-12), (plan.method, form)
            seen.append(got)
        # a flip costs at most one right answer: |drop| <= mismatch
        assert abs(seen[-2]) <= predict.predicted_mismatch(plan, g) + 1e-15
    assert max(seen) > 1e-3
    model = predict._model(g, "independent", "shift", predict.SOFTMAX)
    assert model.criterion == "accuracy_drop"
    _check_moves(model, np.array([3, 2, 3, 4]), np.array([3, 3, 3, 2]))
    t = 0.5 * predict.predicted_accuracy_drop(tfprec.uniform_plan(g, bits=2), g,
                                              predict.SOFTMAX)
    p = cost_aware_lib.cost_aware_plan(g, t, criterion="predicted", labels=predict.SOFTMAX)
    assert predict.predicted_accuracy_drop(p, g, predict.SOFTMAX) <= t * (1 + 1e-6)
    assert p.info["predicted_accuracy_drop"] == pytest.approx(
        predict.predicted_accuracy_drop(p, g, predict.SOFTMAX), rel=1e-9)
    from tfprec.planning import budget as budget_lib
    budget = 0.4 * tfprec.uniform_plan(g, bits=8).cost().total_compute
    bp = budget_lib.predicted_budget_plan(g, budget, labels=predict.SOFTMAX)
    assert bp.cost().total_compute <= budget
    assert bp.info["predicted_accuracy_drop"] == pytest.approx(
        predict.predicted_accuracy_drop(bp, g, predict.SOFTMAX), rel=1e-9)
    assert bp.info["predicted_mismatch"] == pytest.approx(
        predict.predicted_mismatch(bp, g), rel=1e-9)
    with pytest.raises(PlanError, match="per_class=True"):
        predict.softmax_weights(tfprec.noise_gains(m, x))
    with pytest.raises(PlanError, match="or 'softmax' for the label-free expected drop; "
                                        "got 'softmx'"):
        predict.predicted_accuracy_drop(bp, g, "softmx")
    with pytest.raises(PlanError, match="count_gains=True is for class-id labels"):
        predict.predicted_accuracy_drop(bp, g, predict.SOFTMAX, count_gains=True)
    # the top-k pass: p_y over the float decision and the k kept classes
    gk = tfprec.noise_gains(m, x, per_class=True, top_k=2)
    kept = np.take_along_axis(probs, np.asarray(gk.class_index), 1)
    p_y = probs[np.arange(len(x)), dec]
    p_y_k = p_y / (p_y + kept.sum(1))
    np.testing.assert_allclose(predict.softmax_weights(gk),
                               p_y_k[:, None] - kept / (p_y + kept.sum(1))[:, None],
                               rtol=1e-5, atol=1e-7)
    plan = tfprec.uniform_plan(g, bits=2)
    got = predict.predicted_accuracy_drop(plan, gk, predict.SOFTMAX)
    assert got > 0
    assert got <= predict.predicted_mismatch(plan, gk) + 1e-15


def test_flip_to_class_shares_the_flip():
    """flip_to_class: the flip probability of each form, shared among the
    classes in proportion to Phi(-z_i); far classes (z >= 8.5) get 0."""
    from tfprec.planning import predict_model as pm
    z = np.array([[0.3, -1.2, 2.0, 9.0], [9.0, 9.5, 10.0, 8.6], [-3.0, -3.0, 0.0, 1.0]])
    for form in ("independent", "union"):
        got = pm.flip_to_class(z, form)
        np.testing.assert_allclose(got.sum(-1), pm.flip_from_z(z, form), rtol=1e-12)
        q = np.array([[_phi(-v) if v < 8.5 else 0.0 for v in row] for row in z])
        for r in (0, 2):
            np.testing.assert_allclose(got[r] / got[r].sum(), q[r] / q[r].sum(),
                                       rtol=1e-12)
        assert np.all(got[1] == 0)
        assert got[0, 3] == 0


def test_shift_model_is_exact_for_one_layer():
    """Only one layer's weights rounded, everything else at 16 bits: the
    predicted mismatch is the share of the calibration examples that the
    rounding flips (float64 simulation of the fixed-point network)."""
    keras.utils.set_random_seed(51)
    inp = L.Input((6,))
    h = L.ReLU(max_value=2.0)(L.Dense(16, name="h")(inp))
    m = keras.Model(inp, L.Dense(5, name="out")(h))
    x = np.random.default_rng(10).uniform(0, 1, (400, 6))
    g = tfprec.noise_gains(m, x, per_class=True, dtype="float64", batch_size=100)
    z0 = simulate.simulate_logits(m, None, x).argmax(1)
    top = tfprec.uniform_plan(g, bits=16)
    checked = 0
    for name in ("h", "out"):
        for b in (2, 3, 4):
            plan = top.with_bits(weight_bits={name: b})
            flips = np.mean(simulate.simulate_logits(m, plan, x).argmax(1) != z0)
            pred = predict.predicted_mismatch(plan, g)
            assert abs(pred - flips) <= 1.5 / len(x), (name, b, pred, flips)
            checked += flips > 0.01
    assert checked >= 2


def test_predicted_plans_meet_target_and_are_cheaper():
    keras.utils.set_random_seed(31)
    inp = L.Input((8,))
    h = L.Dense(24, name="h1")(inp)
    h = L.ReLU(max_value=2.0)(h)
    h = L.ReLU(max_value=2.0)(L.Dense(24, name="h2")(h))
    m = keras.Model(inp, L.Dense(5, name="out")(h))
    rng = np.random.default_rng(7)
    xc = rng.uniform(0, 1, size=(300, 8)).astype(np.float32)
    xv = rng.uniform(0, 1, size=(3000, 8)).astype(np.float32)
    g = tfprec.noise_gains(m, xc, per_class=True, batch_size=100)
    fdec = m(xv).numpy().argmax(1)

    def measured(plan):
        q = simulate.simulate_logits(m, plan, xv)
        return float(np.mean(q.argmax(1) != fdec))

    lo = tfprec.uniform_plan(g, bits=16).bound()
    hi = tfprec.uniform_plan(g, bits=2).bound()
    grid = [t for t in (lo * 2 ** (k / 2) for k in range(int(2 * math.log2(hi / lo))))
            if t <= 1]
    analytic = [tfprec.cost_aware_plan(g, t) for t in grid]
    analytic = [(p.cost().total_compute, measured(p)) for p in analytic]
    for t in (0.1, 0.03):
        pp = tfprec.cost_aware_plan(g, t, criterion="predicted")
        assert pp.method == "cost_aware_predicted:compute"
        pred = predict.predicted_mismatch(pp, g)
        assert pred <= t and pp.info["predicted_mismatch"] == pytest.approx(pred)
        assert pp == tfprec.make_plan(g, "cost_aware_predicted", t)
        mis = measured(pp)
        # the cheapest analytic-bound plan measured no worse costs no less
        matched = [c for c, mm in analytic if mm <= mis]
        assert matched and pp.cost().total_compute <= min(matched), (t, mis)


def _check_moves(model, bw, ba):
    """model.reset(bw, ba): its current value and every one-bit move's new
    value equal model.value at those bits; returns the moves' deltas."""
    model.reset(bw, ba)
    assert model.cur == pytest.approx(model.value(bw, ba), rel=1e-12)
    new_w, d_w, new_a, d_a = model.moves(bw, ba)
    for i in range(len(bw)):
        for arr, new in ((bw, new_w), (ba, new_a)):
            if arr[i] <= 2:
                continue
            b2 = arr.copy()
            b2[i] -= 1
            want = model.value(b2, ba) if arr is bw else model.value(bw, b2)
            assert new[i] == pytest.approx(want, rel=1e-9, abs=1e-15)
    return d_w, d_a


def test_search_model_across_the_table_edge():
    """Synthetic gains whose 11- and 12-bit noise matters: moves, take and
    value agree when a tensor crosses table_max_bits (its Gaussian variance
    gives way to its table), and value matches its formula."""
    from tfprec.planning.predict_model import PredictedMismatch
    rng = np.random.default_rng(5)
    n, k, nl = 40, 3, 3
    sw = rng.uniform(0, 1, (n, k, nl)) * 4.0 ** 10 * 0.3     # 11 bits: v ~ 0.3 x
    sa = rng.uniform(0, 1, (n, k, nl)) * 4.0 ** 10 * 0.3
    shift = rng.normal(0, 0.3, (nl, 15, n, k))
    act = rng.normal(0, 0.3, (nl, 15, n, k))
    shift[:, 9:] = act[:, 9:] = 0.0                           # tables up to 10 bits
    noise = rng.uniform(0, 1, (2, nl, 15, nl)) * 4.0 ** -np.arange(15)[None, None, :, None]
    r_a = np.array([1.0, 2.0, 0.5])
    model = PredictedMismatch(sw, sa, shift=shift, act_shift=act, input_noise=noise,
                              act_range=r_a, table_max_bits=10)
    for bw, ba in ((np.array([11, 12, 10]), np.array([11, 10, 12])),
                   (np.array([10, 11, 13]), np.array([12, 11, 9]))):
        _check_moves(model, bw, ba)
        for which, i in (("w", 0), ("a", 1), ("w", 1)):
            model.take(which, i, 0.0)
            (bw if which == "w" else ba)[i] -= 1
            assert model.cur == pytest.approx(model.value(bw, ba), rel=1e-12)
        # the formula: z = (1 + mu) / sqrt(2 v)
        t = np.arange(nl)
        nu2 = noise[0, t, bw - 2].sum(0) + noise[1, t, ba - 2].sum(0)
        rho = np.exp(-2 * np.pi ** 2 * nu2 / (r_a * 2.0 ** (1 - ba)) ** 2)
        tab_w, tab_a = bw <= 10, ba <= 10
        mu = shift[t, bw - 2].sum(0) + np.einsum("l,lnk->nk", rho * tab_a, act[t, ba - 2])
        v = (sw @ (4.0 ** (1 - bw) * ~tab_w)
             + sa @ (4.0 ** (1 - ba) * np.where(tab_a, 1 - rho ** 2, 1.0)))
        p = 1 - np.prod([[_phi(z) for z in row] for row in (1 + mu) / np.sqrt(2 * v)], 1)
        assert model.value(bw, ba) == pytest.approx(p.mean(), rel=1e-9)
        assert 0.01 < p.mean()
        assert p.mean() < 0.99


@pytest.mark.parametrize("which", ["gaussian", "shift", "shift_weights_only",
                                   "shift_without_input_noise"])
def test_predicted_search_model_is_consistent(mlp_case, which):
    """reset / moves / take agree with value, with the activation tables
    (with and without the input-noise table), without them (gains made
    before them), and in the Gaussian model."""
    m, x, g = mlp_case
    if which == "shift_weights_only":
        g, which = dataclasses.replace(g, class_act_shift=None), "shift"
    if which == "shift_without_input_noise":
        g, which = dataclasses.replace(g, input_noise=None), "shift"
    model = predict._model(g, "independent", which)
    assert model.model == which
    assert model.has_act_tables == (g.class_act_shift is not None and which == "shift")
    assert (model.noise is not None) == (model.has_act_tables
                                         and g.input_noise is not None)
    for bw, ba in ((np.array([6, 5, 7, 6]), np.array([6, 6, 6, 5])),
                   (np.array([3, 2, 3, 4]), np.array([3, 3, 3, 2])),
                   (np.array([10, 10, 10, 10]), np.array([7, 3, 3, 3])),
                   (np.array([13, 11, 12, 3]), np.array([11, 12, 3, 14]))):
        d_w, d_a = _check_moves(model, bw, ba)
        i = int(np.argmax(bw))
        model.take("w", i, d_w[i])
        bw = bw.copy()
        bw[i] -= 1
        assert model.cur == pytest.approx(model.value(bw, ba), rel=1e-12)
        model.take("a", 0, d_a[0])
        ba = ba.copy()
        ba[0] -= 1
        assert model.cur == pytest.approx(model.value(bw, ba), rel=1e-12)
        gw, ga = model.gradient(bw, ba)
        assert gw.shape == (4,)
        assert ga.shape == (4,)
        assert np.all(np.isfinite(gw)) and np.all(gw >= 0) and np.all(ga >= 0)


def test_prediction_models_are_cached_with_their_gains(mlp_case):
    """predict._model returns one model per (gains object, options) while
    the gains live, another for other options or another gains object, and
    forgets it when the gains are collected."""
    import gc
    _, _, g = mlp_case
    a = predict._model(g, "independent")
    assert predict._model(g, "independent") is a
    assert predict._model(g, "union") is not a
    assert predict._model(g, "independent", labels=predict.SOFTMAX) is not a
    ids = np.arange(len(g.class_margin)) % 5
    b = predict._model(g, "independent", labels=ids)
    assert predict._model(g, "independent", labels=ids.copy()) is b
    assert predict._model(g, "independent", labels=(ids + 1) % 5) is not b
    # at most _MODELS_PER_GAINS per gains object: the oldest goes first
    first = predict._model(g, "union", "gaussian")
    for k in range(predict._MODELS_PER_GAINS):
        predict._model(g, "union", "gaussian", labels=(ids + k) % 5)
    assert len(predict._MODELS[id(g)][1]) == predict._MODELS_PER_GAINS
    assert predict._model(g, "union", "gaussian") is not first
    other = dataclasses.replace(g)
    assert predict._model(other, "independent") is not predict._model(g, "independent")
    key = id(other)
    assert key in predict._MODELS
    del other
    gc.collect()
    assert key not in predict._MODELS or predict._MODELS[key][0]() is not None


def test_memoized_moves_equal_fresh_ones(mlp_case):
    """moves() after lazy take()s, and again from the memo after another
    state, equals the move table of a model built afresh at those bits
    (reset there, nothing memoized) and the values one bit lower."""
    _, _, g = mlp_case
    model = predict._build_model(g, "independent", "shift", None, False)
    bw, ba = np.array([9, 8, 10, 9]), np.array([8, 9, 9, 8])
    model.reset(bw, ba)
    for which, i in (("w", 2), ("a", 1), ("w", 0), ("a", 3)):
        model.moves(bw, ba)
        model.take(which, i, 0.0)
        (bw if which == "w" else ba)[i] -= 1
    first = model.moves(bw, ba)
    fresh = predict._build_model(g, "independent", "shift", None, False)
    fresh.reset(bw, ba)
    want = fresh._moves()
    for got, w in zip(first, want):
        np.testing.assert_allclose(got, w, rtol=1e-12, atol=1e-15)
        assert not got.flags.writeable
    model.reset(bw + 1, ba + 1)
    model.moves(bw + 1, ba + 1)
    model.reset(bw, ba)
    assert all(x is y for x, y in zip(model.moves(bw, ba), first))
    _check_moves(model, bw, ba)


def test_predicted_plans_do_not_depend_on_what_was_planned_before(mlp_case):
    """A grid of predicted plans made in one order from one gains object
    (its model and move tables shared) equals the grid made in the other
    order from a copy of the gains (a model of its own)."""
    _, _, g = mlp_case
    ts = [0.02 * 2 ** (k / 4) for k in range(-8, 9)]
    up = {t: tfprec.cost_aware_plan(g, t, criterion="predicted") for t in ts}
    copy = dataclasses.replace(g)
    down = {t: tfprec.cost_aware_plan(copy, t, criterion="predicted")
            for t in reversed(ts)}
    bits = lambda p: tuple((l.weight_bits, l.act_bits) for l in p.layers)  # noqa: E731
    assert len({bits(p) for p in up.values()}) > 3
    for t in ts:
        assert bits(up[t]) == bits(down[t]), t


@pytest.mark.slow
def test_calibrate_predicted_family():
    """~8 s: TFMOT fake-quant passes."""
    keras.utils.set_random_seed(41)
    inp = L.Input((6,))
    h = L.ReLU(max_value=2.0)(L.Dense(12, name="h")(inp))
    m = keras.Model(inp, L.Dense(4, name="out")(h))
    rng = np.random.default_rng(8)
    g = tfprec.noise_gains(m, rng.uniform(0, 1, (200, 6)).astype(np.float32),
                           per_class=True)
    xv = rng.uniform(0, 1, (1000, 6)).astype(np.float32)
    res = calibrate(m, g, xv, target_mismatch=0.02,
                           methods=("cost_aware_predicted",))
    c = res["cost_aware_predicted"]
    assert c.measured_mismatch <= 0.02
    assert c.evaluations == len(c.trace)
    assert c.evaluations >= 1
    assert c.evaluations <= 12
    assert c.plan.method == "cost_aware_predicted:compute"
    assert predict.predicted_mismatch(c.plan, g) <= c.level
    # the search started at the prediction (t = target) and stopped at a
    # bracket: the next cheaper grid level (a quarter octave looser) was
    # measured and missed, unless the chosen level is the grid's last
    assert c.trace[0][0] == pytest.approx(0.02)
    looser = c.level * 2 ** 0.25
    assert c.level >= 0.02 * 2 ** 4 * 0.999 or any(
        t == pytest.approx(looser) and not ok for t, _, ok in c.trace), c.trace
    # every measured level that passed is no cheaper than the chosen one
    assert all(t <= c.level * 1.0001 for t, _, ok in c.trace if ok)


def test_bad_arguments(mlp_case):
    m, x, g = mlp_case
    plain = tfprec.noise_gains(m, x)
    with pytest.raises(PlanError, match="criterion.*'x'"):
        tfprec.cost_aware_plan(g, 0.1, criterion="x")
    with pytest.raises(PlanError, match=r"per_class=True"):
        tfprec.cost_aware_plan(plain, 0.1, criterion="predicted")
    with pytest.raises(PlanError, match=r"per_class=True"):
        predict.predicted_mismatch(tfprec.paper_plan(plain), plain)
    with pytest.raises(PlanError, match=r"per_class=True"):
        tfprec.make_plan(plain, "cost_aware_predicted", 0.1)
    with pytest.raises(PlanError, match="form.*'gauss'"):
        predict.predicted_mismatch(tfprec.paper_plan(g), g, form="gauss")
    with pytest.raises(PlanError, match="model.*'exact'"):
        predict.predicted_mismatch(tfprec.paper_plan(g), g, model="exact")
    with pytest.raises(PlanError, match="model.*'exact'"):
        cost_aware_lib.predicted_cost_aware_plan(g, 0.1, model="exact")
    no_shift = dataclasses.replace(g, class_shift=None)
    with pytest.raises(PlanError, match="class_shift.*model='gaussian'"):
        predict.predicted_mismatch(tfprec.paper_plan(g), no_shift)
    assert predict.predicted_mismatch(tfprec.paper_plan(g), no_shift,
                                      model="gaussian") > 0
    plan = tfprec.paper_plan(g)
    wide = dataclasses.replace(plan, layers=tuple(
        dataclasses.replace(l, weight_range=2 * l.weight_range) if i == 1 else l
        for i, l in enumerate(plan.layers)))
    with pytest.raises(PlanError, match=f"{plan.layers[1].name!r}.*weight range"):
        predict.predicted_mismatch(wide, g)
    with pytest.raises(PlanError, match="target"):
        tfprec.cost_aware_plan(g, -1.0, criterion="predicted")
    with pytest.raises(UnattainableTargetError, match="predicted mismatch"):
        tfprec.cost_aware_plan(g, 1e-4, max_bits=2, criterion="predicted")
    with pytest.raises(PlanError, match=r"per_class=True"):
        calibrate(m, plain, x, target_mismatch=0.1,
                         methods=("cost_aware_predicted",))
    with pytest.raises(tfprec.errors.InvalidDataError, match="per_class"):
        tfprec.noise_gains(m, x, per_class="yes")


def test_noiseless_margins_flip_for_sure_or_never_or_by_a_coin():
    """Without noise (v = 0) z is -inf (the shift crosses the margin),
    +inf (it does not) or 0 (it lands on it: Phi(0) = 1/2)."""
    from tfprec.planning.predict_model import _z_shift
    z = _z_shift(np.array([0.0, 1.0, -1.0, 2.0]), np.array([0.0, 0.0, 0.0, 2.0]))
    np.testing.assert_array_equal(z, [0.0, np.inf, -np.inf, 1.0])
    np.testing.assert_allclose(predict.flip_from_z(z[:1, None]), [0.5])
