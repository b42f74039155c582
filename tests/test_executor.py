"""The graph executor (tfprec.statistics.executor) and the cost geometry of
the author's convention (num_inputs_written), against independent
computations: Keras itself, TF autodiff, and layer shapes read from Keras."""
import numpy as np
import pytest

import tfprec
from tfprec._tf import keras, tf
from tfprec.application.models import cifar10_vgg
from tfprec.statistics import registry
from tfprec.statistics.executor import Executor, executor_for
from tfprec.statistics.gains import LayerGains, layer_geometry
from tfprec.statistics.graph import WEIGHT_KINDS, parse_model

L = keras.layers


def every_kind_model():
    """Conv + BN, relu6 -> disjoint max-pool (fusable), overlapping max-pool,
    avg-pool, add, concat, dropout, gap, flatten, dense."""
    keras.utils.set_random_seed(3)
    inp = keras.Input((8, 8, 2))
    a = L.Conv2D(4, 3, padding="same", use_bias=False, name="a")(inp)
    a = L.BatchNormalization(name="a_bn")(a)
    a = L.ReLU(6.0, name="a_clip")(a)
    p = L.MaxPooling2D(2, name="pool")(a)                            # 4x4x4
    b = L.Conv2D(4, 1, activation="relu", name="b")(p)
    c = L.Conv2D(4, 1, name="c")(p)
    s = L.Add(name="add")([b, c])
    q = L.MaxPooling2D(3, strides=1, padding="same", name="opool")(s)
    cat = L.Concatenate(name="cat")([q, L.AveragePooling2D(1, name="avg")(s)])
    d = L.Dropout(0.5, name="drop")(cat)
    g = L.GlobalAveragePooling2D(name="gap")(d)
    f = L.Dense(5, activation="relu", name="f")(L.Flatten(name="flat")(g))
    out = L.Dense(3, name="out")(f)
    m = keras.Model(inp, out)
    bn = m.get_layer("a_bn")
    bn.set_weights([w + 0.3 * np.random.default_rng(0).random(w.shape)
                    for w in bn.get_weights()])
    return m


@pytest.fixture(scope="module")
def model():
    return every_kind_model()


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(1).standard_normal((5, 8, 8, 2)).astype(np.float32)


# ---------------------------------------------------------------- forward
def test_forward_matches_keras(model, x):
    ex = Executor(parse_model(model), tf.float64)
    z = ex.forward(tf.constant(x, tf.float64))[ex.g.output_id].numpy()
    np.testing.assert_allclose(z, model(x, training=False).numpy(), rtol=1e-5,
                               atol=1e-5)


def test_forward_overrides_params_and_perturbs_inputs(model, x):
    ex = Executor(parse_model(model), tf.float64)
    x64 = tf.constant(x, tf.float64)
    first = ex.weight_ops[0]             # the only reader of the network input
    assert first.inputs[0] == ex.g.input_id
    eps = [tf.zeros_like(x64) + 0.25 if op is first else tf.zeros(
        [len(x), *ex.g.shapes[op.inputs[0]]], tf.float64) for op in ex.weight_ops]
    got = ex.forward(x64, eps=eps)
    np.testing.assert_allclose(got[ex.g.output_id].numpy(),
                               model(x + 0.25, training=False).numpy(), rtol=1e-5,
                               atol=1e-5)
    assert np.array_equal(got[ex.g.input_id].numpy(), x)  # vals: unperturbed

    # params: the last layer's kernel doubled == a Keras copy with it doubled
    params = [(tf.convert_to_tensor(k), b) for k, b in ex.params]
    k, b = params[-1]
    params[-1] = (2.0 * k, b)
    z = ex.forward(x64, params=params)[ex.g.output_id].numpy()
    m2 = keras.models.clone_model(model)
    m2.set_weights(model.get_weights())
    w = m2.get_layer("out").get_weights()
    m2.get_layer("out").set_weights([2.0 * w[0], w[1]])
    np.testing.assert_allclose(z, m2(x, training=False).numpy(), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------- backward
@pytest.mark.parametrize("c", [1, 3])
def test_backward_rules_match_autodiff(model, x, c):
    """Every non-weight op: the stacked rule == tape VJP row by row."""
    ex = Executor(parse_model(model), tf.float64)
    vals = ex.forward(tf.constant(x, tf.float64))
    rng = np.random.default_rng(c)
    kinds = set()
    for op in ex.g.ops:
        if op.kind in WEIGHT_KINDS:
            continue
        kinds.add(op.kind)
        out_shape = [len(x), *ex.g.shapes[op.output]]
        g = tf.constant(rng.standard_normal([c * len(x), *out_shape[1:]]))
        got = dict(ex.backward_op(op, vals, g, c))
        act = ex.fusable_act.get(op.name)
        srcs = act.inputs if act is not None else op.inputs
        ins = [vals[i] for i in srcs]
        for r in range(c):
            with tf.GradientTape() as tape:
                tape.watch(ins)
                if act is not None:
                    h = registry.forward_op(act, ins, None, tf.float64)
                    y = registry.forward_op(op, [h], None, tf.float64)
                else:
                    y = registry.forward_op(op, ins, ex.g.shapes[op.output],
                                            tf.float64)
            want = tape.gradient(y, ins, output_gradients=g[r * len(x):(r + 1) * len(x)])
            for tid, w in zip(srcs, want):
                np.testing.assert_allclose(
                    got[tid][r * len(x):(r + 1) * len(x)].numpy(), w.numpy(),
                    atol=1e-12, err_msg=f"{op.name} ({op.kind}) row {r}")
    assert kinds == {"act", "maxpool", "avgpool", "gap", "reshape", "identity",
                     "add", "concat"}
    assert "pool" in ex.fusable_act                  # the fused relu6 path ran


# ------------------------------------------------------------------ cache
def test_executor_cache_and_reload(model, x):
    m = keras.models.clone_model(model)
    m.set_weights(model.get_weights())
    e1 = executor_for(m, parse_model(m), tf.float32)
    assert executor_for(m, parse_model(m), tf.float32) is e1
    assert executor_for(m, parse_model(m), tf.float64) is not e1
    m.set_weights([2.0 * w for w in m.get_weights()])
    e2 = executor_for(m, parse_model(m), tf.float32)
    assert e2 is e1
    z = e2.forward(tf.constant(x))[e2.g.output_id].numpy()
    np.testing.assert_allclose(z, m(x, training=False).numpy(), rtol=1e-4, atol=1e-4)
    assert e1.cached("k", lambda e: object()) is e1.cached("k", lambda e: 1 / 0)


# --------------------------------------------- num_inputs_written geometry
def _size(t):
    return int(np.prod(t.shape[1:]))


def test_vgg_num_inputs_written():
    m = cifar10_vgg()
    geo = {g["name"]: g for g in layer_geometry(m)}
    assert geo["conv2_1"]["num_inputs"] == 14 * 14 * 32
    assert geo["conv2_1"]["num_inputs_written"] == 28 * 28 * 32
    # Independent: the Keras output shapes of the layers each one reads.
    wrote = {"conv1_1": m.input, "conv1_2": m.get_layer("conv1_1").output,
             "conv2_1": m.get_layer("conv1_2").output,
             "conv2_2": m.get_layer("conv2_1").output,
             "conv3_1": m.get_layer("conv2_2").output,
             "conv3_2": m.get_layer("conv3_1").output,
             "fc1": m.get_layer("conv3_2").output, "fc2": m.get_layer("fc1").output,
             "logits": m.get_layer("fc2").output}
    assert set(wrote) == set(geo)
    for name, t in wrote.items():
        assert geo[name]["num_inputs_written"] == _size(t), name
        assert geo[name]["num_inputs"] == _size(m.get_layer(name).input), name
    assert geo["conv3_1"]["num_inputs_written"] == 10 * 10 * 64
    assert geo["conv3_1"]["num_inputs"] == 5 * 5 * 64


def test_written_stops_at_merges_and_gains_agree(model, x):
    geo = {g["name"]: g for g in layer_geometry(model)}
    assert geo["a"]["num_inputs_written"] == 8 * 8 * 2          # network input
    for n in ("b", "c"):                                         # before "pool"
        assert geo[n]["num_inputs"] == 4 * 4 * 4
        assert geo[n]["num_inputs_written"] == 8 * 8 * 4
    # f reads flatten(gap(...)): gap is a stored tensor of its own.
    assert geo["f"]["num_inputs_written"] == geo["f"]["num_inputs"] == 8
    assert geo["out"]["num_inputs_written"] == 5
    gains = tfprec.noise_gains(model, x)
    for lg in gains.layers:
        for k, v in geo[lg.name].items():
            assert getattr(lg, k) == v, (lg.name, k)
        assert lg.inputs_written == lg.num_inputs_written


def test_old_gains_dicts_load_without_num_inputs_written(model, x):
    d = tfprec.noise_gains(model, x).to_dict()
    for lg in d["layers"]:
        del lg["num_inputs_written"]
    old = tfprec.NoiseGains.from_dict(d)
    assert all(lg.num_inputs_written is None for lg in old.layers)
    assert [lg.inputs_written for lg in old.layers] == \
        [lg.num_inputs for lg in old.layers]
    assert isinstance(old.layers[0], LayerGains)


# ------------------------------------------------- Hessian peer's inputs
def test_hessian_takes_datasets_of_pairs_and_needs_labels():
    from tfprec.peers.hessian import hessian_trace_sensitivity
    keras.utils.set_random_seed(0)
    model = keras.Sequential([L.Input((6, 6, 2)), L.Conv2D(3, 3, activation="relu"),
                              L.MaxPooling2D(2), L.Flatten(), L.Dense(3)])
    x = np.random.default_rng(1).standard_normal((5, 6, 6, 2)).astype(np.float32)
    y = np.arange(len(x)) % 3
    kw = dict(num_samples=2, batch_size=4, dtype="float64")
    want = hessian_trace_sensitivity(model, x, y, **kw)
    got = hessian_trace_sensitivity(
        model, tf.data.Dataset.from_tensor_slices((x, y)).batch(2), None, **kw)
    assert got.num_examples == len(x)
    for name in want:
        # Same probes, same data: equal up to float64 summation order.
        assert got[name] == pytest.approx(want[name], rel=1e-8, abs=1e-10)
        assert got.activation[name] == pytest.approx(want.activation[name],
                                                     rel=1e-8, abs=1e-10)
    with pytest.raises(tfprec.InvalidDataError, match="needs labels"):
        hessian_trace_sensitivity(model, x, None, **kw)


@pytest.mark.slow
def test_hessian_through_same_padded_overlapping_maxpool():
    """Per-block Hutchinson trace of a conv's weights vs the exact trace from
    central differences of the float64 Keras gradient (first order only).
    TF's MaxPoolGradGrad is wrong (and nondeterministic) for SAME-padded
    overlapping windows; the HVP pass pools by gather instead."""
    from tfprec.peers.hessian import hessian_trace_sensitivity
    keras.utils.set_random_seed(0)
    f64 = dict(dtype="float64")
    m = keras.Sequential([L.Input((4, 4, 4), dtype="float64"), L.Conv2D(4, 1, **f64),
                          L.MaxPooling2D(3, 1, padding="same", **f64),
                          L.GlobalAveragePooling2D(**f64), L.Dense(3, **f64)])
    x = np.random.default_rng(1).standard_normal((5, 4, 4, 4))
    y = np.arange(5) % 3
    tr = hessian_trace_sensitivity(m, x, y, num_samples=400, batch_size=5,
                                   dtype="float64", probes="per_block")
    again = hessian_trace_sensitivity(m, x, y, num_samples=400, batch_size=5,
                                      dtype="float64", probes="per_block")
    assert dict(again) == dict(tr)                            # deterministic
    ws = m.layers[0].trainable_weights
    base = [w.numpy() for w in ws]

    def grad_at(flat):
        o = 0
        for w, b in zip(ws, base):
            w.assign(flat[o:o + b.size].reshape(b.shape))
            o += b.size
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels=y, logits=m(x)))
        return np.concatenate([g.numpy().ravel() for g in tape.gradient(loss, ws)])

    flat = np.concatenate([b.ravel() for b in base])
    h = 1e-5
    exact = sum((grad_at(flat + h * e)[i] - grad_at(flat - h * e)[i]) / (2 * h)
                for i, e in enumerate(np.eye(flat.size)))
    grad_at(flat)
    name = m.layers[0].name
    assert exact > 0.1
    assert abs(tr[name] - exact) < 4 * tr.weight_stderr[name], (tr[name], exact)


def test_auto_batch_size_scales_with_the_network_and_keeps_the_gains():
    """The automatic batch is the largest power of two within the element
    budget, clamped to [128, 1024], counted by hand from Keras' own output
    shapes; the gains do not depend on the batch (up to float rounding)."""
    from tfprec.statistics import executor as ex_lib

    def by_hand(model, rows):
        g = parse_model(model)
        per = rows * sum(int(np.prod(g.shapes[o.output])) for o in g.ops)
        b = 1
        while 2 * b * per <= ex_lib.AUTO_BATCH_ELEMENTS:
            b *= 2
        return min(ex_lib.AUTO_BATCH_MAX, max(ex_lib.AUTO_BATCH_MIN, b))

    vgg = cifar10_vgg()
    assert ex_lib.auto_batch_size(parse_model(vgg), 9) == 128
    assert by_hand(vgg, 9) == 128
    mlp = keras.Sequential([keras.Input((20,)), L.Dense(16, activation="relu"),
                            L.Dense(4)])
    assert ex_lib.auto_batch_size(parse_model(mlp), 3) == ex_lib.AUTO_BATCH_MAX
    # a 64x64x64 convolution output: 2^28 / (3 x 262212) = 341 examples -> 256
    mid = keras.Sequential([keras.Input((64, 64, 1)), L.Conv2D(64, 1),
                            L.GlobalAveragePooling2D(), L.Dense(4)])
    assert ex_lib.auto_batch_size(parse_model(mid), 3) == 256
    assert by_hand(mid, 3) == 256
    keras.utils.set_random_seed(0)
    xs = np.random.default_rng(0).standard_normal((300, 20)).astype(np.float32)
    auto = tfprec.noise_gains(mlp, xs)
    fixed = tfprec.noise_gains(mlp, xs, batch_size=128)
    for a, b in zip(auto.layers, fixed.layers):
        np.testing.assert_allclose([a.e_w, a.e_a], [b.e_w, b.e_a], rtol=1e-5)
