"""Independent float64 brute-force reference for tfprec's noise gains.

Nothing here uses tfprec's graph parser, layer registry or gain executor
(only ``tfprec.compat``'s look-up of the layer call that produced a tensor): the
model is re-executed in float64 by walking its Keras tensors and calling the
plain TensorFlow math of each layer; BatchNormalization is folded here with
numpy; gradients come from ``tf.GradientTape``, one example and one logit at a
time:

    E_T = (1/24) * mean_x sum_{i != y} ||d(z_i - z_y)/dT||^2 / (z_i - z_y)^2

For every weight layer the tape watches its folded kernel and bias (float64
``tf.Variable``) and a zero float64 perturbation added to the layer's input
and used by that layer alone, so its gradient is the gradient with respect to
the layer's input through that layer only.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from tfprec import compat  # only the two tensor -> producer look-ups
from tfprec._tf import keras, tf  # only to get TF with Keras 2 selected

L = keras.layers
WEIGHT_CLASSES = (L.Dense, L.Conv2D, L.DepthwiseConv2D)
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
    kernel: np.ndarray          # folded, float64
    bias: object                # folded, float64 or None
    e_w: float = 0.0
    e_a: float = 0.0
    in_min: float = math.inf    # over the calibration examples
    in_max: float = -math.inf


@dataclasses.dataclass
class RefGains:
    layers: dict
    num_examples: int
    num_ties: int
    num_classes: int

    def __getitem__(self, name):
        return self.layers[name]


def _act(name: str, t):
    if name == "linear":
        return t
    if name == "relu":
        return tf.nn.relu(t)
    if name == "relu6":
        return tf.minimum(tf.nn.relu(t), tf.constant(6.0, F64))
    raise NotImplementedError(f"reference: activation {name!r}")


def _act_name(fn) -> str:
    return "linear" if fn is None else getattr(fn, "__name__", str(fn))


class Reference:
    """float64 re-execution of a Sequential / functional tf_keras model."""

    def __init__(self, model):
        self.model = model
        out_t = model.outputs[0]
        self.out_layer = compat.producing_layer(out_t)
        # Does the model end in a softmax? (Dense(activation='softmax') or a
        # trailing Activation('softmax') / Softmax layer.)
        self.final_softmax = (
            isinstance(self.out_layer, L.Softmax)
            or (hasattr(self.out_layer, "activation")
                and _act_name(self.out_layer.activation) == "softmax"))

        # BatchNormalization folding, done here with numpy.
        self.folded_bn = {}  # weight layer name -> BN layer
        for layer in model.layers:
            if isinstance(layer, L.BatchNormalization):
                src = compat.producing_layer(layer.input)
                assert type(src) in WEIGHT_CLASSES, layer.name
                assert _act_name(src.activation) == "linear", layer.name
                self.folded_bn[src.name] = layer

        self.vars = {}  # name -> (kernel var, bias var or None, input perturbation var)
        self.info = {}
        self.order = []
        for layer in model.layers:
            if type(layer) not in WEIGHT_CLASSES:
                continue
            w = layer.get_weights()
            k = np.array(w[0], np.float64)
            b = np.array(w[1], np.float64) if layer.use_bias else None
            bn = self.folded_bn.get(layer.name)
            if bn is not None:
                k, b = self._fold(layer, bn, k, b)
            in_shape = tuple(layer.input_shape[1:])
            kv = tf.Variable(k, dtype=F64)
            bv = None if b is None else tf.Variable(b, dtype=F64)
            pv = tf.Variable(np.zeros((1,) + in_shape), dtype=F64)
            self.vars[layer.name] = (kv, bv, pv)
            self.info[layer.name] = (type(layer).__name__, k, b)
            self.order.append(layer.name)

    @staticmethod
    def _fold(layer, bn, k, b):
        # get_weights() order: [gamma], [beta], moving_mean, moving_variance
        params = {}
        names = []
        if bn.scale:
            names.append("gamma")
        if bn.center:
            names.append("beta")
        names += ["moving_mean", "moving_variance"]
        for nm, val in zip(names, bn.get_weights()):
            params[nm] = np.array(val, np.float64)
        cout = params["moving_mean"].shape[0]
        gamma = params.get("gamma", np.ones(cout))
        beta = params.get("beta", np.zeros(cout))
        s = gamma / np.sqrt(params["moving_variance"] + bn.epsilon)
        if isinstance(layer, L.DepthwiseConv2D):
            kh, kw, cin, m = k.shape
            k = k * s.reshape(cin, m)[None, None, :, :]
        else:
            k = k * s  # last kernel axis is the output channel
        b0 = np.zeros(cout) if b is None else b
        return k, (b0 - params["moving_mean"]) * s + beta

    # ------------------------------------------------------------ forward
    def _eval(self, t, x, memo, record):
        key = id(t)
        if key in memo:
            return memo[key]
        layer = compat.producing_layer(t)
        node = compat.producing_node(t)
        if isinstance(layer, L.InputLayer) or node.is_input:
            memo[key] = x
            return x
        ins = [self._eval(u, x, memo, record) for u in node.keras_inputs]
        a = ins[0]
        cls = type(layer)
        if cls in WEIGHT_CLASSES:
            kv, bv, pv = self.vars[layer.name]
            if record is not None:
                record.setdefault(layer.name, []).append(a)
            a = a + pv  # this layer's private input perturbation
            if cls is L.Dense:
                y = tf.matmul(a, kv)
            else:
                assert tuple(layer.dilation_rate) == (1, 1)
                st = [1, *layer.strides, 1]
                pad = layer.padding.upper()
                if cls is L.Conv2D:
                    y = tf.nn.conv2d(a, kv, st, pad)
                else:
                    y = tf.nn.depthwise_conv2d(a, kv, st, pad)
            if bv is not None:
                y = y + bv
            act = _act_name(layer.activation)
            if act == "softmax":
                assert layer is self.out_layer
                out = y  # logits
            else:
                out = _act(act, y)
        elif cls is L.BatchNormalization:
            out = a  # folded into the producing weight layer
        elif cls is L.Activation:
            act = _act_name(layer.activation)
            if act == "softmax":
                assert layer is self.out_layer
                out = a
            else:
                out = _act(act, a)
        elif cls is L.Softmax:
            assert layer is self.out_layer
            out = a
        elif cls is L.ReLU:
            assert float(layer.negative_slope) == 0 and float(layer.threshold) == 0
            out = tf.nn.relu(a)
            if layer.max_value is not None:
                out = tf.minimum(out, tf.constant(float(layer.max_value), F64))
        elif cls is L.MaxPooling2D:
            out = tf.nn.max_pool2d(a, layer.pool_size, layer.strides,
                                   layer.padding.upper())
        elif cls is L.AveragePooling2D:
            out = tf.nn.avg_pool2d(a, layer.pool_size, layer.strides,
                                   layer.padding.upper())
        elif cls is L.GlobalAveragePooling2D:
            out = tf.reduce_mean(a, axis=[1, 2], keepdims=bool(layer.keepdims))
        elif cls is L.Flatten:
            out = tf.reshape(a, [tf.shape(a)[0], -1])
        elif cls is L.Reshape:
            out = tf.reshape(a, [tf.shape(a)[0], *layer.output_shape[1:]])
        elif cls is L.Dropout:
            out = a
        elif cls is L.Add:
            out = ins[0]
            for u in ins[1:]:
                out = out + u
        elif cls is L.Concatenate:
            out = tf.concat(ins, axis=layer.axis)
        else:
            raise NotImplementedError(f"reference: {cls.__name__}")
        memo[key] = out
        return out

    def logits(self, x, record=None):
        x = tf.constant(np.asarray(x, np.float64))
        return self._eval(self.model.outputs[0], x, {}, record)

    def check_forward(self, x, tol=1e-5):
        """Asserts the float64 forward reproduces model(x); returns max error."""
        z = self.logits(x).numpy()
        if self.final_softmax:
            z = tf.nn.softmax(z).numpy()
        want = self.model(np.asarray(x, np.float32), training=False).numpy()
        err = float(np.max(np.abs(z - want)))
        scale = max(1.0, float(np.max(np.abs(want))))
        assert err <= tol * scale, (
            f"reference forward differs from model(x): max |diff| {err}")
        return err

    # -------------------------------------------------------------- gains
    def gains(self, x) -> RefGains:
        x = np.asarray(x, np.float64)
        self.check_forward(x)
        res = {n: RefLayer(n, *self.info[n]) for n in self.order}
        sources = []
        for n in self.order:
            kv, bv, pv = self.vars[n]
            sources.append([kv] + ([bv] if bv is not None else []))
            pv.assign(tf.zeros_like(pv))
        perts = [self.vars[n][2] for n in self.order]
        ties = 0
        m = None
        for e in range(len(x)):
            rec = {}
            with tf.GradientTape(persistent=True) as tape:
                z = self.logits(x[e:e + 1], rec)[0]
                m = int(z.shape[0])
                zk = [z[k] for k in range(m)]
            for n in self.order:
                a = rec[n][0].numpy()
                res[n].in_min = min(res[n].in_min, float(a.min()))
                res[n].in_max = max(res[n].in_max, float(a.max()))
            zn = z.numpy()
            y = int(np.argmax(zn))
            flat = [v for s in sources for v in s] + perts
            grads = [tape.gradient(zk[k], flat,
                                   unconnected_gradients=tf.UnconnectedGradients.ZERO)
                     for k in range(m)]
            del tape
            for i in range(m):
                if i == y:
                    continue
                d = float(zn[i] - zn[y])
                if d == 0.0:
                    ties += 1
                    continue
                g = [gi.numpy() - gy.numpy() for gi, gy in zip(grads[i], grads[y])]
                pos = 0
                for n, s in zip(self.order, sources):
                    sq = sum(float(np.sum(g[pos + j] ** 2)) for j in range(len(s)))
                    pos += len(s)
                    res[n].e_w += sq / d ** 2
                for j, n in enumerate(self.order):
                    res[n].e_a += float(np.sum(g[pos + j] ** 2)) / d ** 2
        for r in res.values():
            r.e_w /= 24.0 * len(x)
            r.e_a /= 24.0 * len(x)
        return RefGains(res, len(x), ties, m)


def reference_gains(model, x) -> RefGains:
    return Reference(model).gains(x)
