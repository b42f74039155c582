"""Per-class shift tables of the mismatch predictor (issue 13).

Rounding is deterministic: a weight tensor's rounding error Q_b(W) - W is
fixed, and an activation's Q_b(a(x)) - a(x) is fixed for each input x.
Neither is independent noise: at low bits most small values round to zero,
the error is coherent with the gradient, and a margin moves by an amount
that grows like the number of values, not its square root.  The
predictor's "shift" model (:mod:`tfprec.planning.predict`) therefore adds,
for each tensor, the exact change of every kept margin z_y - z_i when only
that tensor is rounded to b = 2..10 bits (:data:`TABLE_MAX_BITS`; the
entries of b = 11..16 are 0, and the predictor counts those bit-widths as
Gaussian noise):

* ``class_shift`` [L, 15, N, K]: layer l's kernel and bias rounded on their
  range R_W (per output channel R_c with ``per_channel``);
* ``class_act_shift`` [L, 15, N, K]: layer l's input tensor rounded on its
  range R_A (:func:`activation_format`), as the fake-quant model rounds
  it; a tensor read by several weight layers is one quantizer: its row is
  held by its first reader (all readers re-run from the rounded tensor),
  the others' rows are 0.  Integer ids (embeddings) have no row (0).

On the CIFAR-10 VGG, one layer's input at 2 bits (all else float) flips
11.3 % of 1000 decisions; this table predicts 11.3 %, the Gaussian model
2.8 %.

:class:`ShiftPass` computes both per batch: one forward, then per weight
op and bit-width a re-run of only the ops downstream of that op
(:meth:`Executor.forward_from`) with its output recomputed from the
rounded weights or the rounded input; no loop over examples.  The
activation ranges must be known before the pass: :func:`activation_formats`
is a forward-only pre-pass over the calibration data.  The same re-runs
record how far each rounded tensor moves every weight layer's input
(``input_noise``; above 10 bits each bit a quarter of the last).

In the quantized network an activation is rounded after the upstream
rounding has moved it, so its known shift holds only in part.  How much:
:func:`coherence_table` (``act_coherence``) projects the expected rounding
error of each input value under Gaussian upstream noise of standard
deviation s Delta onto its rounding error without it, over a sample of the
first batch's nonzero values, for b = 2..10 bits and the spreads s of
:data:`COHERENCE_SPREADS` (exact expectations: sums of normal CDFs over the
grid's rounding thresholds).
"""
from __future__ import annotations

import numpy as np
from scipy.special import ndtr

from tfprec._tf import tf
from tfprec.errors import InvalidDataError
from tfprec.fixedpoint import MAX_BITS, MIN_BITS, int_limits, quantize, range_scale
from tfprec.statistics import channels, registry
from tfprec.statistics.executor import Executor
from tfprec.statistics.graph import NO_ACT_KINDS

#: Bit-widths of the tables (index b - MIN_BITS).
NUM_BITS = MAX_BITS - MIN_BITS + 1

#: The widest bit-width the shift tables compute (their entries above it
#: are 0): finer rounding errors are pseudo-random and tiny, and the
#: predictor counts them as Gaussian noise, which saves 6 of the 15
#: re-runs per tensor.
TABLE_MAX_BITS = 10

#: Upstream-noise spreads s = nu / Delta (standard deviation over the
#: step) of the coherence table; between them the predictor interpolates
#: linearly, above the last it keeps the last.
COHERENCE_SPREADS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.6, 0.8, 1.2, 2.0)

#: Nonzero input values per tensor (a fixed-seed sample of the first batch)
#: behind the coherence table.
COHERENCE_VALUES = 2000

#: Most downstream values (elements) one stacked re-run of the shift pass
#: holds (2^25: 128 MiB in float32).
SHIFT_ELEMENTS = 1 << 25


def activation_format(graph, op, amin: float, amax: float) -> dict:
    """The input format of weight op ``op`` from the observed extremes of
    its input (``amin``, ``amax``): a known bound of the graph wins over
    them.  Returns dict(lo, hi, source, signed, r_a, has_act) as the gains
    record them (``r_a``: the power-of-two range scale R_A; for integer
    ids, ``has_act`` False and R_A 1)."""
    lo_known, hi_known = graph.bounds.get(op.inputs[0], (None, None))
    lo = lo_known if lo_known is not None else float(amin)
    if lo_known is not None and hi_known is not None:
        hi, src = float(hi_known), "known bound"
    else:
        hi, src = float(amax), "calibrated"
    has_act = op.kind not in NO_ACT_KINDS
    if not has_act:                 # integer ids: no activation format
        lo, hi, src = 0.0, 0.0, "none"
    signed = lo < 0
    return dict(lo=float(lo), hi=float(hi), source=src, signed=bool(signed),
                r_a=range_scale(lo, hi, signed), has_act=has_act)


def activation_formats(graph, ex: Executor, batches) -> list:
    """Per weight op, :func:`activation_format` from the extremes of its
    input over ``batches`` (forward passes only), as the gains pass records
    them (the activation tables need R_A before the gains pass); placeholder
    formats when ``batches`` is empty (the gains pass then refuses it)."""
    nw = len(ex.weight_ops)
    amax = np.full(nw, -np.inf)
    amin = np.full(nw, np.inf)
    for b in batches:
        vals = ex.forward(tf.convert_to_tensor(b, ex.dtype))
        for j, op in enumerate(ex.weight_ops):
            a = vals[op.inputs[0]]
            if int(tf.size(a)):
                amax[j] = max(amax[j], float(tf.reduce_max(a)))
                amin[j] = min(amin[j], float(tf.reduce_min(a)))
    if not np.all(np.isfinite(amin)):
        amin = amax = np.zeros(nw)
    return [activation_format(graph, op, lo, hi)
            for op, lo, hi in zip(graph.weight_ops, amin, amax)]


def check_same_format(op, f: dict, f0: dict) -> None:
    """Raises InvalidDataError when op's input format ``f`` from the gains
    pass differs from ``f0`` of the range pre-pass (the data changed between
    the two reads)."""
    if (f["r_a"], f["signed"]) != (f0["r_a"], f0["signed"]):
        raise InvalidDataError(
            f"x (calibration data): layer {op.name!r}: its input ranged over "
            f"[{f['lo']:g}, {f['hi']:g}] in the gains pass but over "
            f"[{f0['lo']:g}, {f0['hi']:g}] in the range pre-pass of "
            "per_class=True (the data changed between two reads: a shuffled or "
            "random dataset?); pass fixed data, e.g. a numpy array or a dataset "
            "without reshuffling")


class ShiftPass:
    """Per-class weight and activation shift tables over an executor.

    :meth:`step` maps (x [B, ...], kept classes [B, K] int32, weight stacks
    of :func:`shift_pass_for`) to the weight shifts [L, 15, B, K] and, when
    the pass has activation formats (``act_formats``: per weight op
    (bits-independent) ``(r_a, signed)`` or None, one per op; None for no
    activation tables), the activation shifts [L, 15, B, K] (float64,
    logit units), then the perturbation tables of the same re-runs
    [L, 15, L] for the weights and the activations (the latter None
    without activation formats): per source op, bit-width and destination op l,
    the batch's sum of each example's mean squared change of op l's input
    over its nonzero float values (squared activation units; the
    predictor's estimate of the upstream noise each activation quantizer
    sees).  Only b = 2..10 (:data:`TABLE_MAX_BITS`) are re-run: the
    shift tables are 0 above, the perturbation tables continue a quarter
    per bit.  It runs eagerly (TF ops, no tracing), so small models pay
    no trace of L x 9 partial forwards; the rounded copies of one op run
    downstream together, stacked along the batch axis (up to
    :data:`SHIFT_ELEMENTS` downstream values per re-run; the other tensors
    they read are tiled to match), so a small network pays the eager
    dispatch of each downstream op once per weight op, not once per
    bit-width.
    """

    def __init__(self, ex: Executor, num_bits: int, num_rows: int):
        self.ex = ex
        self.nb = num_bits
        self.rows = num_rows
        self._copies = {}

    def stacks(self, quantized) -> list:
        """Per weight op, a list over the bit-widths of (kernel, bias or None)
        tensors of the pass dtype, from the same of numpy arrays."""
        cast = lambda t: None if t is None else tf.constant(t, self.ex.dtype)
        return [[(cast(k), cast(b)) for k, b in per] for per in quantized]

    def step(self, x, cls, stacks, act_formats=None):
        ex = self.ex
        x = tf.convert_to_tensor(x, ex.dtype)
        cls = tf.convert_to_tensor(cls, tf.int32)
        vals = ex.forward(x)
        z = vals[ex.g.output_id]
        y = tf.argmax(z, axis=1, output_type=tf.int32)
        m0 = _margins(z, y, cls)
        batch = int(x.shape[0])
        runner = _Runner(ex, vals, y, cls, m0, batch)
        out, noise = [], []
        for op, per in zip(ex.weight_ops, stacks):
            a = vals[op.inputs[0]]
            fns = registry.lookup(op.kind)
            make = lambda k_b, op=op, a=a, fns=fns: {op.output: fns.forward(
                dict(op.attrs, kernel_t=k_b[0], bias_t=k_b[1]), a)}
            d, p = runner.run(op, per, make, self.copies_per_run(op, batch))
            out.append(d)
            noise.append(p)
        if act_formats is None:
            return _pad(tf.stack(out)), None, _extend(tf.stack(noise)), None
        dt = ex.dtype.as_numpy_dtype
        zeros = tf.zeros([self.nb, batch, int(cls.shape[1])], tf.float64)
        nw = len(ex.weight_ops)
        acts, anoise, done = [], [], set()
        for op, fmt in zip(ex.weight_ops, act_formats):
            t = op.inputs[0]
            if fmt is None or t in done:         # ids, or a later reader
                acts.append(zeros)
                anoise.append(tf.zeros([self.nb, nw], tf.float64))
                continue
            done.add(t)
            readers = [o for o in ex.weight_ops if o.inputs[0] == t]
            a = vals[t].numpy()

            def make(b, a=a, fmt=fmt, readers=readers):
                aq = tf.constant(quantize(a, b, *fmt).astype(dt))   # numpy: fewer dispatches
                return {o.output: registry.lookup(o.kind).forward(o.attrs, aq)
                        for o in readers}
            bits = list(range(MIN_BITS, MIN_BITS + self.nb))
            d, p = runner.run(op, bits, make, self.copies_per_run(op, batch))
            acts.append(d)
            anoise.append(p)
        return (_pad(tf.stack(out)), _pad(tf.stack(acts)), _extend(tf.stack(noise)),
                _extend(tf.stack(anoise)))

    def copies_per_run(self, op, batch: int) -> int:
        """Rounded copies of ``op`` re-run downstream together: as many as
        keep the re-run's values (every op output downstream of ``op``, per
        example, times the stacked batch) within :data:`SHIFT_ELEMENTS`."""
        key = (op.output, batch)
        if key not in self._copies:
            g = self.ex.g
            ops = g.ops[g.ops.index(op):]
            per_ex = sum(int(np.prod(g.shapes[o.output])) for o in ops)
            self._copies[key] = int(max(1, min(self.nb, SHIFT_ELEMENTS
                                               // max(1, per_ex * batch))))
        return self._copies[key]


def _pad(t):
    """Shift tables [L, nb, B, K] of b = 2..1+nb padded with 0 to the 15
    bit-widths."""
    return tf.pad(t, [[0, 0], [0, NUM_BITS - int(t.shape[1])], [0, 0], [0, 0]])


def _extend(t):
    """Perturbation tables [L, nb, L] of b = 2..1+nb extended to the 15
    bit-widths, each further bit a quarter of the last (the mean square of
    a fine rounding error, Delta^2 / 12)."""
    more = NUM_BITS - int(t.shape[1])
    f = tf.constant(4.0 ** -np.arange(1, more + 1), t.dtype)
    return tf.concat([t, t[:, -1:] * f[None, :, None]], axis=1)


def _margins(zz, yy, cc):
    """z_y - z_i [B, K] of the kept classes ``cc``."""
    zy = tf.gather(zz, yy, axis=1, batch_dims=1)
    return zy[:, None] - tf.gather(zz, cc, batch_dims=1)


class _Runner:
    """Re-runs the network downstream of replaced op outputs, several
    copies stacked along the batch axis, and returns the margin shifts."""

    def __init__(self, ex, vals, y, cls, m0, batch):
        self.ex, self.vals, self.y, self.cls = ex, vals, y, cls
        self.m0, self.batch = m0, batch
        self.tiled: dict = {}
        # the weight ops' input tensors, and per example the number of
        # nonzero values of each in the float pass (at least 1)
        self.dests = [op.inputs[0] for op in ex.weight_ops]
        self.nonzero = {}
        for t in set(self.dests):
            v = tf.reshape(vals[t], [batch, -1])
            self.nonzero[t] = tf.maximum(tf.cast(tf.math.count_nonzero(
                v, axis=1), tf.float64), 1.0)

    def run(self, op, items, make, copies: int):
        """Margin shifts [len(items), B, K] (float64) and the perturbation
        table [len(items), L] (float64): ``make(item)`` gives the replaced
        outputs {tensor id: [B, ...]} of one copy.  The table holds, per
        item and weight op l, the sum over the batch of each example's
        squared change of op l's input, summed over its values and divided
        by the number of its nonzero values in the float pass (0 for ops
        not downstream of the replaced outputs)."""
        rows, pert = [], []
        keep = set(self.dests)
        for lo in range(0, len(items), copies):
            parts = [make(it) for it in items[lo:lo + copies]]
            n = len(parts)
            new = {k: tf.concat([p[k] for p in parts], 0) for k in parts[0]}
            tiled = _Tiled(self.vals, n)
            zq, moved = self.ex.forward_from(tiled, new, keep)
            if n not in self.tiled:            # y and the kept classes, n copies
                self.tiled[n] = (tf.tile(self.y, [n]), tf.tile(self.cls, [n, 1]))
            d = _margins(zq, *self.tiled[n])
            rows.append(tf.reshape(d, [n, self.batch, -1]) - self.m0)
            per_t = {}
            for t, v in moved.items():
                e2 = tf.reduce_sum(tf.square(tf.reshape(v - tiled[t], [n, self.batch, -1])),
                                   axis=2)
                per_t[t] = tf.reduce_sum(tf.cast(e2, tf.float64) / self.nonzero[t], axis=1)
            zero = tf.zeros([n], tf.float64)
            pert.append(tf.stack([per_t.get(t, zero) for t in self.dests], axis=1))
        return tf.cast(tf.concat(rows, 0), tf.float64), tf.concat(pert, 0)


class _Tiled:
    """``vals`` (tensor id -> [B, ...]) read as n copies stacked along the
    batch axis ([n * B, ...], copy-major), each tile made once."""

    def __init__(self, vals: dict, n: int):
        self.vals, self.n, self.cache = vals, n, {}

    def __getitem__(self, key):
        if self.n == 1:
            return self.vals[key]
        if key not in self.cache:
            v = self.vals[key]
            self.cache[key] = tf.tile(v, [self.n] + [1] * (len(v.shape) - 1))
        return self.cache[key]


def shift_pass_for(ex, rows: int, per_channel: bool = False):
    """The cached :class:`ShiftPass` of ``ex`` and its rounded-weight stacks:
    every weight op's kernel and bias rounded to b = 2..10 bits on the op's
    range R_W (as :class:`LayerGains` ``r_w``; per output channel R_c with
    ``per_channel``, as ``r_w_channels``), in the pass dtype."""
    sp = ex.cached(("shifts", rows), lambda e: ShiftPass(
        e, TABLE_MAX_BITS - MIN_BITS + 1, rows))
    dt = ex.dtype.as_numpy_dtype
    quantized = []
    for op in ex.weight_ops:
        w = [np.asarray(op.attrs[k], dt) if op.attrs[k] is not None else None
             for k in ("kernel", "bias")]
        r = channels.op_channel_ranges(ex.g, op) if per_channel else None
        if r is None:                                     # as LayerGains.r_w
            wmax = float(max(np.max(np.abs(op.attrs[k])) for k in ("kernel", "bias")
                             if op.attrs[k] is not None))
            r = range_scale(-wmax, wmax, True)
        quantized.append([tuple(None if t is None else
                                quantize(t, b, r, True).astype(dt) for t in w)
                          for b in range(MIN_BITS, TABLE_MAX_BITS + 1)])
    return sp, sp.stacks(quantized)


def expected_rounding_error(a: np.ndarray, bits: int, r_a: float, signed: bool,
                            nu: float) -> np.ndarray:
    """E[Q(y) - y] per value of ``a`` for y = a + n, n ~ N(0, nu^2) (for
    an unsigned format y = max(a + n, 0): the tensor cannot go negative,
    as after a ReLU), Q the format's rounding (ties up, saturating):
    Q(y) = Delta (sum_{k=1..k_max} 1[y >= (k - 1/2) Delta] - sum_{k=1..-k_min}
    1[y < -(k - 1/2) Delta]), so E[Q(y)] is a sum of normal CDFs; only the
    thresholds within 9 nu of a are evaluated (the others count 0 or 1).
    nu = 0: the rounding error itself."""
    a = np.asarray(a, float)
    lo, hi = int_limits(bits, signed)
    d = float(r_a) * 2.0 ** (1 - bits)
    if nu <= 0:
        return quantize(a, bits, r_a, signed) - a

    def count_up(x, kmax):
        """E[#{k = 1..kmax: x + n >= (k - 1/2) d}] per value of x."""
        first = np.clip(np.ceil((x - 9 * nu) / d + 0.5) - 1, 0, kmax)   # sure ones
        k = first[:, None] + 1 + np.arange(int(np.ceil(18 * nu / d)) + 2)
        p = np.where(k <= kmax, ndtr((x[:, None] - (k - 0.5) * d) / nu), 0.0)
        return first + p.sum(1)
    q = d * count_up(a, hi)
    if signed:
        q -= d * count_up(-a, -lo)           # y < -(k - 1/2) d  <=>  -y > (k - 1/2) d
        return q - a
    z = a / nu
    return q - (a * ndtr(z) + nu * np.exp(-0.5 * z * z) / np.sqrt(2 * np.pi))


def coherence_table(ex: Executor, batch, formats) -> np.ndarray:
    """f [L, 9, S] (b = 2..10 bits, S = len(COHERENCE_SPREADS)): per weight
    op l, the share of its input's rounding error e(a) that stays coherent
    under upstream noise of spread s Delta, sum_a E[e(a + n)] e(a) /
    sum_a e(a)^2 over up to :data:`COHERENCE_VALUES` nonzero values a of
    its input on ``batch`` (a fixed-seed sample), with
    :func:`expected_rounding_error`; 1 at s = 0, and where nothing rounds
    (no nonzero value, no error) or the layer has no activation format
    (``formats[l]`` None)."""
    bits = range(MIN_BITS, TABLE_MAX_BITS + 1)
    out = np.ones((len(ex.weight_ops), len(bits), len(COHERENCE_SPREADS)))
    vals = ex.forward(tf.convert_to_tensor(batch, ex.dtype))
    for l, (op, fmt) in enumerate(zip(ex.weight_ops, formats)):
        if fmt is None:
            continue
        a = vals[op.inputs[0]].numpy().astype(float).ravel()
        a = a[a != 0]
        if len(a) > COHERENCE_VALUES:
            a = np.random.default_rng(0).choice(a, COHERENCE_VALUES, replace=False)
        for i, b in enumerate(bits):
            e0 = expected_rounding_error(a, b, *fmt, 0.0)
            den = float(e0 @ e0)
            if den == 0:
                continue
            d = fmt[0] * 2.0 ** (1 - b)
            for j, sp in enumerate(COHERENCE_SPREADS[1:], 1):
                out[l, i, j] = float(expected_rounding_error(a, b, *fmt, sp * d) @ e0) / den
    return out
