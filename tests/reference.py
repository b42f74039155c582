"""Independent float64 brute-force reference for tfprec's noise gains.

Nothing here uses tfprec's graph parser, node iterator, layer registry or
gain executor (only ``tfprec.compat``'s look-up of the layer call that
produced a tensor):
the model is re-executed in float64, node by node, from its Keras graph; each
node's call arguments (``Node.call_args`` / ``call_kwargs``, Keras tensors
replaced by their float64 values, constants kept, so ``x + 3.0`` TFOpLambda
nodes work) are passed to

* a weight op (below): plain TensorFlow math or a float64 clone of the layer
  whose weights are float64 ``tf.Variable`` the tape watches;
* ``TFOpLambda`` / ``Lambda``: the wrapped function itself;
* any other layer: a float64 clone (``from_config`` with dtype float64 and
  the layer's weights copied), differentiated through.

Weight ops (the definitions tfprec follows):

* every layer with trainable weights is one, named as the layer, whose
  weight tensors are all its trainable weights (kernel and bias, PReLU alpha,
  LayerNormalization gamma and beta, the Embedding table, ...);
* a BatchNormalization that directly follows a Dense / Conv1D / Conv2D
  (grouped, dilated) / DepthwiseConv2D layer with linear activation (not a
  transposed convolution, not a SeparableConv2D), and alone consumes its
  output, is folded into it: W' = W*s, b' = (b - mean)*s + beta, s = gamma/sqrt(var+eps)
  (per output channel); any other BatchNormalization with trainable weights is
  a weight op with tensors scale = s and offset = beta - mean*s
  (y = x*scale + offset per channel);
* SeparableConv2D is two ops: ``<name>_depthwise`` (depthwise kernel, input
  the layer's input) and ``<name>`` (pointwise kernel and bias, input the
  depthwise output);
* Embedding has no activation input (E_A = 0).

A final softmax / sigmoid (fused in the last layer, or an Activation / Softmax
layer at the output) is dropped; a single output logit z becomes the
two-class logits [0, z].  Gradients come from ``tf.GradientTape``, one example
and one logit at a time:

    E_T = (1/24) * mean_x sum_{i != y} ||d(z_i - z_y)/dT||^2 / (z_i - z_y)^2

over the op's weight tensors (E_W), or over a zero float64 perturbation added
to the op's input and used by that op alone (E_A).  Ties (z_i == z_y) are
skipped and counted.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from tfprec import compat  # only the two tensor -> producer look-ups
from tfprec._tf import keras, tf  # only to get TF with Keras 2 selected

L = keras.layers
WEIGHT_CLASSES = (L.Dense, L.Conv2D, L.DepthwiseConv2D)  # plain-TF-math ops
# BatchNormalization folds into these (output channel = the kernel's last
# axis, or a depthwise kernel's last two), not into a transposed convolution
# (a subclass of ConvND) nor a SeparableConv2D: a BN after those is standalone.
FOLD_TARGETS = (L.Dense, L.Conv1D, L.Conv2D, L.DepthwiseConv2D, L.SeparableConv2D)
TRANSPOSED = (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose)
DROPPED = ("softmax", "sigmoid")
F64 = tf.float64


def pow2_at_least(v: float) -> float:
    """Smallest power of two >= v (exact, via frexp); 1.0 for v <= 0."""
    if not v > 0:
        return 1.0
    m, e = math.frexp(v)  # v = m * 2**e with 0.5 <= m < 1
    return math.ldexp(1.0, e - 1) if m == 0.5 else math.ldexp(1.0, e)


@dataclasses.dataclass
class RefLayer:
    name: str
    layer_class: str
    kernel: np.ndarray          # first weight tensor (folded), float64
    bias: object                # second weight tensor (folded) or None
    e_w: float = 0.0
    e_a: float = 0.0
    in_min: float = math.inf    # over the calibration examples
    in_max: float = -math.inf
    tensors: list = dataclasses.field(default_factory=list)  # all, float64
    channel_ranges: object = None   # per-channel R_c (gains(per_channel=True))


@dataclasses.dataclass
class RefGains:
    layers: dict
    num_examples: int
    num_ties: int
    num_classes: int

    def __getitem__(self, name):
        return self.layers[name]


def _act_name(fn) -> str:
    return "linear" if fn is None else getattr(fn, "__name__", str(fn))


def _is_symbolic(v) -> bool:
    try:
        return bool(keras.backend.is_keras_tensor(v))
    except ValueError:  # not a tensor at all (a constant, a slice, None)
        return False


def _bn_params(bn) -> dict:
    """gamma, beta, moving_mean, moving_variance of ``bn`` as float64."""
    names = (["gamma"] if bn.scale else []) + (["beta"] if bn.center else [])
    names += ["moving_mean", "moving_variance"]
    p = {n: np.array(v, np.float64) for n, v in zip(names, bn.get_weights())}
    c = p["moving_mean"].shape
    p.setdefault("gamma", np.ones(c))
    p.setdefault("beta", np.zeros(c))
    return p


def _fold(layer, bn, k, b):
    """Folds ``bn`` into ``layer``'s kernel ``k`` (pointwise kernel for a
    SeparableConv2D) and bias ``b`` (None: zero), with numpy."""
    p = _bn_params(bn)
    s = p["gamma"] / np.sqrt(p["moving_variance"] + bn.epsilon)
    if isinstance(layer, L.DepthwiseConv2D):
        k = k * s.reshape(k.shape[-2], k.shape[-1])
    elif isinstance(layer, TRANSPOSED):
        k = k * s[:, None]  # kernel [..., out, in]
    else:
        k = k * s  # last kernel axis is the output channel
    b0 = np.zeros_like(s) if b is None else b
    return k, (b0 - p["moving_mean"]) * s + p["beta"]


class _Op:
    """One weight op: its watched float64 weights and input perturbation."""

    def __init__(self, name, layer_class, variables, has_input=True):
        self.name = name
        self.layer_class = layer_class
        self.vars = list(variables)
        self.has_input = has_input
        self.pert = None  # created on the first call, shape (1,) + input

    def feed(self, a, record):
        """The op's input with its private perturbation added."""
        if not self.has_input:
            return a
        if record is not None:
            record.setdefault(self.name, []).append(a)
        if self.pert is None:
            self.pert = tf.Variable(np.zeros((1,) + tuple(a.shape[1:])), dtype=F64)
        return a + self.pert


class Reference:
    """float64 re-execution of a Sequential / functional tf_keras model."""

    MULTI_INPUT = False     # MultiInputReference: several inputs

    def __init__(self, model):
        self.model = model
        if len(model.outputs) != 1 or (len(model.inputs) != 1 and not self.MULTI_INPUT):
            raise NotImplementedError("reference: one input and one output only")
        out_t = model.outputs[0]
        self.out_layer = compat.producing_layer(out_t)
        ol = self.out_layer
        act = (_act_name(ol.activation) if hasattr(ol, "activation") else
               "softmax" if isinstance(ol, L.Softmax) else None)
        self.final = act if act in DROPPED else None
        self.final_softmax = self.final == "softmax"
        self.in_dtype = tf.as_dtype(model.inputs[0].dtype)

        # the model's own layer calls, deepest first (Keras' own node table;
        # not tfprec's node iterator, which reads TimeDistributed(Dense) as
        # its Dense and expands nested models: here a wrapper is one layer)
        by_depth = model._nodes_by_depth
        nodes = [n for d in sorted(by_depth, reverse=True) for n in by_depth[d]
                 if not n.is_input]
        consumers = {}
        for n in nodes:
            for kt in n.keras_inputs:
                consumers[id(kt)] = consumers.get(id(kt), 0) + 1
        consumers[id(out_t)] = consumers.get(id(out_t), 0) + 1
        calls = {}
        for n in nodes:
            calls[n.layer.name] = calls.get(n.layer.name, 0) + 1

        # BatchNormalization folding, done here with numpy.
        self.folded_bn = {}  # weight layer name -> BN layer
        for n in nodes:
            bn = n.layer
            if not isinstance(bn, L.BatchNormalization) or len(n.keras_inputs) != 1:
                continue
            t = n.keras_inputs[0]
            src = compat.producing_layer(t)
            if (isinstance(src, FOLD_TARGETS) and not isinstance(src, TRANSPOSED)
                    and calls.get(src.name) == 1
                    and calls[bn.name] == 1 and consumers[id(t)] == 1
                    and _act_name(src.activation) == "linear"):
                self.folded_bn[src.name] = bn
        folded = {bn.name for bn in self.folded_bn.values()}

        self.ops = {}      # op name -> _Op
        self.runners = {}  # layer name -> callable(args, kwargs, record)
        self.order = []
        for layer in model.layers:
            if isinstance(layer, L.InputLayer) or layer.name in folded:
                continue
            if not any(v.trainable for v in layer.weights):
                continue
            if calls.get(layer.name, 0) != 1:
                raise NotImplementedError(
                    f"reference: weight layer {layer.name!r} called "
                    f"{calls.get(layer.name, 0)} times")
            self._make_weight_op(layer)
        self.vars = {}  # name -> (first var, second var or None, perturbation)
        self.info = {}
        self._clones = {}
        z0 = self._probe_logits()  # builds clones and variables
        self.num_classes = int(z0.shape[-1])
        for n in self.order:
            op = self.ops[n]
            v = op.vars + [None]
            self.vars[n] = (v[0], v[1], op.pert)
            self.info[n] = (op.layer_class, v[0].numpy().copy(),
                            None if v[1] is None else v[1].numpy().copy())

    def _probe_logits(self):
        """Logits of one all-zero example (the first call builds the clones)."""
        in_shape = tuple(self.model.input_shape[1:])
        if None in in_shape:
            raise NotImplementedError(f"reference: input shape {in_shape} not fixed")
        return self.logits(np.zeros((1,) + in_shape))

    # ------------------------------------------------------- weight ops
    def _activation(self, layer, y):
        act = _act_name(layer.activation)
        if act == "linear" or (layer is self.out_layer and act in DROPPED):
            return y
        return layer.activation(y)

    def _new_op(self, name, layer, tensors, has_input=True):
        op = _Op(name, type(layer).__name__,
                 [tf.Variable(np.asarray(t, np.float64), dtype=F64) for t in tensors],
                 has_input)
        self.ops[name] = op
        self.order.append(name)
        return op

    def _make_weight_op(self, layer):
        cls = type(layer)
        bn = self.folded_bn.get(layer.name)
        w = [np.array(t, np.float64) for t in layer.get_weights()]
        if cls in WEIGHT_CLASSES:
            k = w[0]
            b = w[1] if layer.use_bias else None
            if bn is not None:
                k, b = _fold(layer, bn, k, b)
            op = self._new_op(layer.name, layer, [k] + ([b] if b is not None else []))
            self.runners[layer.name] = lambda a, kw, rec: self._plain(layer, op, a, rec)
        elif cls is L.SeparableConv2D:
            dk, pk = w[0], w[1]
            b = w[2] if layer.use_bias else None
            if bn is not None:
                pk, b = _fold(layer, bn, pk, b)
            dop = self._new_op(layer.name + "_depthwise", layer, [dk])
            pop = self._new_op(layer.name, layer, [pk] + ([b] if b is not None else []))
            self.runners[layer.name] = (
                lambda a, kw, rec: self._separable(layer, dop, pop, a, rec))
        elif cls is L.BatchNormalization:
            p = _bn_params(layer)
            s = p["gamma"] / np.sqrt(p["moving_variance"] + layer.epsilon)
            op = self._new_op(layer.name, layer, [s, p["beta"] - p["moving_mean"] * s])
            self.runners[layer.name] = lambda a, kw, rec: self._bn(layer, op, a, rec)
        else:
            cfg = dict(layer.get_config(), dtype="float64", trainable=True)
            if bn is not None:
                k, b = _fold(layer, bn, w[0], w[1] if layer.use_bias else None)
                cfg["use_bias"] = True
                w = [k, b]
            if layer is self.out_layer and self.final is not None:
                cfg["activation"] = "linear"
            clone = cls.from_config(cfg)
            op = _Op(layer.name, cls.__name__, [],
                     has_input=not isinstance(layer, L.Embedding))
            self.ops[layer.name] = op
            self.order.append(layer.name)

            def run(a, kw, rec, clone=clone, op=op, w=w):
                a = op.feed(a, rec)
                if not clone.built:
                    clone(a, **kw)
                    clone.set_weights(w)
                    op.vars = [v for v in clone.weights if v.trainable]
                return clone(a, **kw)
            self.runners[layer.name] = run

    def _plain(self, layer, op, a, rec):
        a = op.feed(a, rec)
        kv, bv = (op.vars + [None])[:2]
        if isinstance(layer, L.Dense):
            y = tf.matmul(a, kv) if a.shape.rank == 2 else tf.tensordot(a, kv, 1)
        else:
            st = [1, *layer.strides, 1]
            pad = layer.padding.upper()
            dil = list(layer.dilation_rate)
            if isinstance(layer, L.DepthwiseConv2D):
                y = tf.nn.depthwise_conv2d(a, kv, st, pad, dilations=dil)
            else:
                # tf.nn.convolution: a dilated conv2d has no CPU input gradient;
                # a grouped one none either, so each group is its own conv.
                g = layer.groups
                ks = tf.split(kv, g, axis=3) if g > 1 else [kv]
                ins = tf.split(a, g, axis=3) if g > 1 else [a]
                y = tf.concat([tf.nn.convolution(u, k, layer.strides, pad, dilations=dil)
                               for u, k in zip(ins, ks)], axis=3)
        if bv is not None:
            y = y + bv
        return self._activation(layer, y)

    def _separable(self, layer, dop, pop, a, rec):
        a = dop.feed(a, rec)
        d = tf.nn.depthwise_conv2d(a, dop.vars[0], [1, *layer.strides, 1],
                                   layer.padding.upper(),
                                   dilations=list(layer.dilation_rate))
        d = pop.feed(d, rec)
        y = tf.nn.conv2d(d, pop.vars[0], [1, 1, 1, 1], "VALID")
        if len(pop.vars) > 1:
            y = y + pop.vars[1]
        return self._activation(layer, y)

    def _bn(self, layer, op, a, rec):
        a = op.feed(a, rec)
        rank = a.shape.rank
        axes = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
        axes = [ax % rank for ax in axes]
        shape = [a.shape[i] if i in axes else 1 for i in range(rank)]
        shape[0] = 1
        return a * tf.reshape(op.vars[0], shape) + tf.reshape(op.vars[1], shape)

    # ------------------------------------------------------------ forward
    def _other(self, layer, args, kwargs):
        """A non-weight layer run as itself in float64."""
        if isinstance(layer, L.Lambda):
            return layer.function(*args, **{**layer.arguments, **kwargs})
        if type(layer).__name__ == "TFOpLambda":
            kwargs = {k: v for k, v in kwargs.items() if k != "name"}
            return layer.function(*args, **kwargs)
        if layer is self.out_layer and self.final is not None:
            return args[0]  # the dropped final softmax / sigmoid
        clone = self._clones.get(layer.name)
        if clone is None:
            clone = type(layer).from_config(dict(layer.get_config(), dtype="float64"))
            out = clone(*args, **kwargs)
            self._clones[layer.name] = clone
            if not layer.weights:
                return out
            clone.set_weights(layer.get_weights())
            if hasattr(clone, "finalize_state"):
                clone.finalize_state()  # e.g. Normalization's mean / variance
        return clone(*args, **kwargs)

    def _eval(self, t, x, memo, record):
        key = id(t)
        if key in memo:
            return memo[key]
        layer = compat.producing_layer(t)
        node = compat.producing_node(t)
        if isinstance(layer, L.InputLayer) or node.is_input:
            memo[key] = x
            return x

        def value(v):
            return self._eval(v, x, memo, record) if _is_symbolic(v) else v
        args = tf.nest.map_structure(value, list(node.call_args))
        kwargs = tf.nest.map_structure(value, dict(node.call_kwargs))
        if layer.name in self.runners:
            a = args[0] if args else kwargs.pop("inputs")
            kw = {k: v for k, v in kwargs.items() if k not in ("training", "mask")}
            out = self.runners[layer.name](a, kw, record)
        elif layer.name in {b.name for b in self.folded_bn.values()}:
            out = args[0]  # folded into the producing weight layer
        else:
            out = self._other(layer, args, kwargs)
        outs = tf.nest.flatten(node.outputs)
        vals = tf.nest.flatten(out)
        for kt, v in zip(outs, vals):
            memo[id(kt)] = v
        return memo[key]

    def raw_logits(self, x, record=None):
        """The model's last layer output before any dropped softmax/sigmoid."""
        if tf.is_tensor(x):
            x = tf.cast(x, F64 if self.in_dtype.is_floating else self.in_dtype)
        elif self.in_dtype.is_floating:
            x = tf.constant(np.asarray(x, np.float64))
        else:
            x = tf.constant(np.asarray(x), self.in_dtype)
        return self._eval(self.model.outputs[0], x, {}, record)

    def logits(self, x, record=None):
        """Classifier logits [B, M] in float64 (single logit z -> [0, z])."""
        z = self.raw_logits(x, record)
        if z.shape[-1] == 1:
            z = tf.concat([tf.zeros_like(z), z], axis=-1)
        return z

    def check_forward(self, x, tol=1e-5):
        """Asserts the float64 forward reproduces model(x); returns max error."""
        z = self.raw_logits(x)
        if self.final == "softmax":
            z = tf.nn.softmax(z)
        elif self.final == "sigmoid":
            z = tf.sigmoid(z)
        z = z.numpy()
        xin = np.asarray(x, np.float32 if self.in_dtype.is_floating
                         else self.in_dtype.as_numpy_dtype)
        want = self.model(xin, training=False).numpy()
        err = float(np.max(np.abs(z - want)))
        scale = max(1.0, float(np.max(np.abs(want))))
        assert err <= tol * scale, (
            f"reference forward differs from model(x): max |diff| {err}")
        return err

    # -------------------------------------------------------------- gains
    def gains(self, x, per_channel: bool = False) -> RefGains:
        """Brute-force gains; ``per_channel``: Dense / Conv2D /
        DepthwiseConv2D weights on one range R_c per output channel, E_W the
        sum over channels of (R_c / R_W)^2 times the channel's squared
        gradient (``RefLayer.channel_ranges`` holds the R_c)."""
        x = np.asarray(x) if not self.in_dtype.is_floating else np.asarray(x, np.float64)
        self.check_forward(x)
        ops = [self.ops[n] for n in self.order]
        res = {}
        for op in ops:
            ts = [v.numpy().copy() for v in op.vars]
            res[op.name] = RefLayer(op.name, op.layer_class, ts[0],
                                    ts[1] if len(ts) > 1 else None, tensors=ts)
            if op.pert is not None:
                op.pert.assign(tf.zeros_like(op.pert))
        weights = {op.name: [1.0] * len(op.vars) for op in ops}
        if per_channel:
            for op in ops:
                if op.layer_class in ("Dense", "Conv2D", "DepthwiseConv2D"):
                    weights[op.name] = _channel_weights(res[op.name])
        sources = [op.vars for op in ops]
        with_input = [op for op in ops if op.pert is not None]
        perts = [op.pert for op in with_input]
        flat = [v for s in sources for v in s] + perts
        m = self.num_classes

        @tf.function(autograph=False)
        def step(x1):
            """Logits, per-logit gradients and recorded inputs of one example
            (one graph for all examples: the same ops as eagerly, faster)."""
            rec = {}
            with tf.GradientTape(persistent=True) as tape:
                z = self.logits(x1, rec)[0]
                zk = [z[k] for k in range(m)]
            grads = [[tf.convert_to_tensor(g) for g in tape.gradient(
                zk[k], flat, unconnected_gradients=tf.UnconnectedGradients.ZERO)]
                for k in range(m)]  # (an Embedding's gradient is IndexedSlices)
            return z, grads, [rec[op.name][0] for op in with_input]

        ties = 0
        for e in range(len(x)):
            z, grads, ins = step(tf.constant(x[e:e + 1]))
            grads = [[g.numpy() for g in gk] for gk in grads]
            for op, a in zip(with_input, ins):
                a = a.numpy()
                r = res[op.name]
                r.in_min = min(r.in_min, float(a.min()))
                r.in_max = max(r.in_max, float(a.max()))
            zn = z.numpy()
            y = int(np.argmax(zn))
            for i in range(m):
                if i == y:
                    continue
                d = float(zn[i] - zn[y])
                if d == 0.0:
                    ties += 1
                    continue
                g = [gi - gy for gi, gy in zip(grads[i], grads[y])]
                pos = 0
                for op, s in zip(ops, sources):
                    wts = weights[op.name]
                    sq = sum(float(np.sum(wts[j] * g[pos + j] ** 2)) for j in range(len(s)))
                    pos += len(s)
                    res[op.name].e_w += sq / d ** 2
                for j, op in enumerate(with_input):
                    res[op.name].e_a += float(np.sum(g[pos + j] ** 2)) / d ** 2
        for r in res.values():
            r.e_w /= 24.0 * len(x)
            r.e_a /= 24.0 * len(x)
        return RefGains(res, len(x), ties, m)


def _channel_weights(r: RefLayer) -> list:
    """(R_c / R_W)^2 per output channel, shaped like the kernel and the
    bias: channels are the bias's entries, the kernel's last axis (Dense,
    Conv2D) or last two axes [C_in, multiplier] (DepthwiseConv2D)."""
    k = np.abs(r.kernel)
    if r.layer_class == "DepthwiseConv2D":
        m = k.max(axis=(0, 1))                      # [C_in, mult]
    else:
        m = k.reshape(-1, k.shape[-1]).max(axis=0)  # [C]
    if r.bias is not None:
        m = np.maximum(m, np.abs(r.bias).reshape(m.shape))
    rc = np.vectorize(pow2_at_least)(m)
    if np.any(m == 0):
        rc[m == 0] = rc[m > 0].min() if np.any(m > 0) else 1.0
    r.channel_ranges = rc.reshape(-1)
    w = (rc / rc.max()) ** 2
    out = [np.broadcast_to(w, r.kernel.shape)]
    if r.bias is not None:
        out.append(w.reshape(r.bias.shape))
    return out


def reference_gains(model, x) -> RefGains:
    return Reference(model).gains(x)


def clear_margins(ref: "Reference", x, frac: float):
    """Examples of x whose every wrong-class margin is >= frac * the median
    logit spread (max z - min z) in ``ref``'s float64 logits: no near-ties,
    where a float32 pass and the reference may disagree on the decision."""
    z = ref.logits(x).numpy()
    top = z.max(axis=1, keepdims=True)
    gaps = np.where(z == top, np.inf, top - z).min(axis=1)
    spread = float(np.median(z.max(axis=1) - z.min(axis=1)))
    return x[gaps >= frac * spread]


def randomize(model, seed: int):
    """Non-trivial float weights for a test model, by weight name: kernels
    N(0, 1.2^2 / fan_in), biases / beta / moving_mean N(0, 0.3^2), gamma
    U(0.5, 1.5), moving_variance U(0.5, 2), PReLU alpha U(0.05, 0.5),
    embeddings N(0, 1).  Other weights (Normalization statistics) are kept."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        new = []
        for v in layer.weights:
            nm = v.name.split("/")[-1].split(":")[0]
            shape = tuple(v.shape)
            if "kernel" in nm:
                if isinstance(layer, (L.DepthwiseConv2D,)) or "depthwise" in nm:
                    fan_in = int(np.prod(shape[:-2]))
                elif isinstance(layer, TRANSPOSED):
                    fan_in = int(np.prod(shape[:-2])) * shape[-1]
                else:
                    fan_in = int(np.prod(shape[:-1]))
                val = rng.normal(0.0, 1.2 / math.sqrt(fan_in), shape)
            elif nm in ("bias", "beta", "moving_mean"):
                val = rng.normal(0.0, 0.3, shape)
            elif nm == "gamma":
                val = rng.uniform(0.5, 1.5, shape)
            elif nm == "moving_variance":
                val = rng.uniform(0.5, 2.0, shape)
            elif nm == "alpha":
                val = rng.uniform(0.05, 0.5, shape)
            elif nm == "embeddings":
                val = rng.normal(0.0, 1.0, shape)
            else:
                val = v.numpy()
            new.append(np.asarray(val, v.dtype.as_numpy_dtype))
        if new:
            layer.set_weights(new)
    return model


class MultiInputReference(Reference):
    """The reference for a functional model with several inputs: ``xs`` is a
    list of arrays [N, ...] in ``model.inputs`` order.  Each input tensor of
    the model gets its own array's rows (float inputs in float64, integer
    ones in their dtype); examples are addressed by index, one at a time."""

    MULTI_INPUT = True

    def _probe_logits(self):
        self._xs = self._arrays([np.zeros((1, *t.shape[1:])) for t in self.model.inputs])
        return self.logits(np.zeros((1, 1)))

    def _arrays(self, xs):
        return [np.asarray(v, np.float64) if t.dtype.is_floating
                else np.asarray(v, t.dtype.as_numpy_dtype)
                for v, t in zip(xs, self.model.inputs)]

    def raw_logits(self, idx, record=None):
        """Logits of the examples whose indices (float) ``idx`` [B, 1] holds."""
        i = tf.cast(tf.reshape(idx, [-1]), tf.int32)
        memo = {id(t): tf.gather(tf.constant(v), i)
                for t, v in zip(self.model.inputs, self._xs)}
        return self._eval(self.model.outputs[0], None, memo, record)

    def check_forward(self, idx, tol=1e-5):
        z = self.raw_logits(tf.constant(idx))
        if self.final == "softmax":
            z = tf.nn.softmax(z)
        elif self.final == "sigmoid":
            z = tf.sigmoid(z)
        i = np.asarray(idx, np.int64).reshape(-1)
        xin = [np.asarray(v[i], np.float32 if t.dtype.is_floating else v.dtype)
               for v, t in zip(self._xs, self.model.inputs)]
        want = self.model(xin, training=False).numpy()
        err = float(np.max(np.abs(z.numpy() - want)))
        assert err <= tol * max(1.0, float(np.max(np.abs(want)))), (
            f"reference forward differs from model(x): max |diff| {err}")
        return err

    def gains(self, xs) -> RefGains:
        self._xs = self._arrays(xs)
        n = len(self._xs[0])
        assert all(len(v) == n for v in self._xs)
        return super().gains(np.arange(n, dtype=np.float64)[:, None])


def reference_gains_multi(model, xs) -> RefGains:
    """:func:`reference_gains` of a model with several inputs (``xs``: a list
    of arrays in ``model.inputs`` order)."""
    return MultiInputReference(model).gains(xs)
