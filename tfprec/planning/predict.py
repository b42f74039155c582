"""A mismatch *predictor* (an estimate, not a bound) and allocation under it.

The paper's bound (METHOD.md section 2) applies Chebyshev's inequality to
each margin, which makes it loose by 10-1000x and dominated by a few
near-tied examples.  The gains pass already computes what a far better
estimate needs: for every example x, wrong class i and tensor T,

    s_hat_{T,i}(x) = ||d(z_i - z_y)/dT||^2 / (z_i - z_y)^2

(``noise_gains(..., per_class=True)`` keeps them, divided by 24, as
``class_w`` / ``class_a``).  Modelling the quantization noise of tensor T
as independent, zero-mean, with variance Delta_T^2 / 12, the first-order
noise on the margin m_i = z_y - z_i is zero-mean with variance
sigma_i^2 = sum_T (Delta_T^2 / 12) ||d(z_i - z_y)/dT||^2, i.e.

    sigma_i^2 / m_i^2 = sum_T (Delta_T^2 / 12) s_hat_{T,i}(x)
                      = 2 v_i(x),   v_i(x) = sum_T 4^(1-B_T) G_{T,i}(x)

with Delta_T = R_T 2^(1-B_T) and G_{T,i}(x) = R_T^2 s_hat_{T,i}(x) / 24
(v_i(x) is the Chebyshev term of the per-example bound, which sums it over
i).  The noise is a sum of many small independent terms, so it is modelled
as Gaussian: class i overtakes y with probability Phi(-m_i / sigma_i) =
Phi(-1 / sqrt(2 v_i)), and the flip probability of x is

* ``form="independent"`` (default): 1 - prod_i Phi(m_i / sigma_i), the
  classes' flips treated as independent events;
* ``form="union"``: min(1, sum_i Phi(-m_i / sigma_i)).

Both are at least max_i Phi(-m_i/sigma_i) and at most the union; the flips
of different classes share the noise on z_y and are positively correlated,
for which the independent form is the (slightly) larger of the true value
and the union form the larger still.  ``benchmarks/predictor.py`` compares
the prediction with the measured mismatch on held-out data.  The predicted
mismatch is the mean over the gains' examples of the flip probability (the
expectation over x of the fraction of changed decisions; since weight noise
is one realization shared by all examples, a measured rate scatters around
it by more than the binomial error).

A shared input tensor (several layers reading one tensor, ``act_group``)
is one quantizer: its per-class value is already the gradient of the one
tensor (the readers' gradients summed), held by its first reader only, as
in the per-example bound.

The weights are fixed, so their rounding error dW_T(B) = Q_B(W_T) - W_T
is known exactly and is *not* independent noise: at low bits most weights
round to zero, the error is exactly -W, coherent with the gradient, and
the margin shift grows like the number of weights, not its square root
(on a well-trained MNIST MLP at B = 2-3 the Gaussian model above predicts
10-15x too little).  The default ``model="shift"`` therefore treats the
weights' rounding as the deterministic shift it is: ``noise_gains(...,
per_class=True)`` tabulates, for every weight tensor T, bit-width b = 2..16
and kept (example, class) row, the exact margin shift
d_{T,b,i}(x) = (z_y - z_i)(W_T -> Q_b(W_T)) - (z_y - z_i)(W)
(``class_shift``, a forward difference), and a plan's shifts add up over
tensors (first order): mu_i(x) = sum_T d_{T,B_T,i}(x).  Only the
activations' rounding (activations change with x) stays Gaussian noise,
sigma_i^2 = 2 m_i^2 sum_{T in activations} 4^(1-B_T) G_{T,i}(x), and class
i overtakes y with probability Phi(-(m_i + mu_i) / sigma_i), combined over
classes by ``form`` as above.  ``model="gaussian"`` is the first version
(weights as noise too), kept for comparison.

It is an *estimate*: the shifts of several layers are added although the
network is non-linear (MNIST MLP, all weights at B bits: the sum's relative
error against the joint shift is 0.14-0.17 at B = 3-4 and 0.04 at B = 8;
at B = 2 it overshoots), the
activations' rounding is still modelled as independent noise, and it does
not bound the mismatch.  Tied examples (z_i == z_y) add nothing (their
s_hat is zero and their relative shift is taken as 0).

* :func:`predicted_mismatch`: the prediction for a plan (probability);
* :func:`predicted_accuracy_drop`: with the labels of the gains' examples,
  the expected right answers lost (right examples that flip), a fraction of
  examples; flips of examples the float model already gets wrong do not
  count, so it can be far below the mismatch (CIFAR-10 VGG: 11 changed
  decisions of 1000 for a 0.3 pp drop);
* :class:`PredictedMismatch`: the same as a bound model of
  :mod:`tfprec.planning.search` (value / reset / moves / take), vectorized
  over examples and updated incrementally (a weight move is a lookup in the
  shift tables);
* :func:`tfprec.planning.cost_aware.predicted_cost_aware_plan`: the cheapest plan found whose predicted
  mismatch meets a target (``cost_aware_plan(..., criterion="predicted")``).
"""
from __future__ import annotations

import dataclasses
import numpy as np
from scipy.special import log_ndtr, ndtr

from tfprec import inputs
from tfprec.errors import PlanError
from tfprec.fixedpoint import MAX_BITS, MIN_BITS
from tfprec.planning.plan import PrecisionPlan
from tfprec.planning.rules import _leads

#: Flip-probability forms of one example (see the module doc).
FORMS = ("independent", "union")
DEFAULT_FORM = "independent"
#: Prediction models (see the module doc): known weight shifts plus Gaussian
#: activation noise (default), or everything Gaussian (the first version).
MODELS = ("shift", "gaussian")
DEFAULT_MODEL = "shift"
#: Method string (prefix) of the plans :func:`tfprec.planning.cost_aware.predicted_cost_aware_plan` makes.
METHOD = "cost_aware_predicted"


def _check_form(form) -> str:
    if not isinstance(form, str) or form not in FORMS:
        raise PlanError(f"form must be one of {FORMS}, got {form!r}")
    return form


def _check_model(model) -> str:
    if not isinstance(model, str) or model not in MODELS:
        raise PlanError(f"model must be one of {MODELS}, got {model!r}")
    return model


def class_terms(gains) -> tuple:
    """Normalized per-class gains (G_{W,i}(x), G_{A,i}(x)) [N, K, L] of
    ``gains`` (R^2 times ``class_w`` / ``class_a``; a shared input tensor
    held by its first reader only), in probability per 4^(1-B).

    Raises:
      PlanError: ``gains`` were computed without ``per_class=True``.
    """
    cw = getattr(gains, "class_w", None)
    ca = getattr(gains, "class_a", None)
    if cw is None or ca is None:
        raise PlanError("the mismatch predictor needs gains computed with "
                        "noise_gains(..., per_class=True); these gains have no "
                        "per-class data (class_w / class_a)")
    rw2 = np.array([g.r_w ** 2 for g in gains.layers])
    ra2 = np.array([g.r_a ** 2 for g in gains.layers])
    lead = _leads(gains)
    ra2 = ra2 * (lead == np.arange(len(lead)))
    return np.asarray(cw, float) * rw2, np.asarray(ca, float) * ra2


def shift_terms(gains) -> np.ndarray:
    """Relative weight shifts r_{T,b,i}(x) = d_{T,b,i}(x) / m_i(x) [L, 15,
    N, K] of ``gains`` (``class_shift`` over ``class_margin``; 0 for tied
    rows, whose margin is 0): the change of margin i, in margins, when only
    tensor T's weights are rounded to b = 2..16 bits (index b - 2).

    Raises:
      PlanError: ``gains`` have no weight-shift tables (``class_shift``).
    """
    sh = getattr(gains, "class_shift", None)
    mg = getattr(gains, "class_margin", None)
    if sh is None or mg is None:
        raise PlanError("the mismatch predictor's 'shift' model needs the weight-"
                        "shift tables of noise_gains(..., per_class=True) "
                        "(class_shift); these gains have none: recompute them, "
                        "or use model='gaussian'")
    mg = np.asarray(mg, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(mg > 0, np.asarray(sh, float) / mg, 0.0)


def flip_probability(v: np.ndarray, form: str = DEFAULT_FORM) -> np.ndarray:
    """Per-example flip probability from v [..., K] (v_i = sigma_i^2 /
    (2 m_i^2), see the module doc) over the last axis: [...]."""
    with np.errstate(divide="ignore"):
        z = 1.0 / np.sqrt(2.0 * np.asarray(v, float))      # m / sigma (inf at v=0)
    return flip_from_z(z, form)


# A class with z = (m + mu)/sigma >= this adds less than Phi(-8.5) ~ 1e-17
# to an example's flip probability: it is counted as 0, and only the
# (typically few) nearer classes are evaluated.
_Z_FAR = 8.5


def flip_from_z(z: np.ndarray, form: str = DEFAULT_FORM) -> np.ndarray:
    """Per-example flip probability from z_i = (m_i + mu_i) / sigma_i [..., K]
    (class i overtakes y with probability Phi(-z_i)) over the last axis.
    Classes with z_i >= 8.5 count as 0 (each would add < 1e-17)."""
    z = np.asarray(z, float)
    near = z < _Z_FAR
    terms = np.zeros(z.shape)
    if form == "union":
        terms[near] = ndtr(-z[near])
        return np.minimum(terms.sum(-1), 1.0)
    terms[near] = log_ndtr(z[near])
    return -np.expm1(terms.sum(-1))


def help_from_z(z: np.ndarray, col: np.ndarray) -> np.ndarray:
    """Per-example probability that the class in column ``col`` [...] of
    z [..., K] becomes the decision: it overtakes the float decision,
    Phi(-z_col), and no other kept class does, prod_{i != col} Phi(z_i)
    (independent classes).  0 where ``col`` is -1 (no such column) or where
    z_col >= 8.5 (as :func:`flip_from_z`, which counts such a class as 0)."""
    z = np.asarray(z, float)
    col = np.broadcast_to(np.asarray(col), z.shape[:-1])
    has = col >= 0
    zc = np.take_along_axis(z, np.where(has, col, 0)[..., None], -1)[..., 0]
    near = z < _Z_FAR
    near &= np.arange(z.shape[-1]) != np.where(has, col, -1)[..., None]
    keep = np.zeros(z.shape)
    keep[near] = log_ndtr(z[near])      # log Phi(z_i) of the other near classes
    others = keep.sum(-1)
    live = has & (zc < _Z_FAR)
    out = np.zeros(z.shape[:-1])
    out[live] = np.exp(log_ndtr(-zc[live]) + others[live])
    return out


def _z_shift(num: np.ndarray, v: np.ndarray) -> np.ndarray:
    """z = num / sqrt(2 v) with num = 1 + mu/m and v = sigma^2 / (2 m^2);
    without noise (v = 0) the flip is certain (num < 0), impossible (num >
    0) or a coin toss (num = 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        z = num / np.sqrt(2.0 * v)
    return np.where(v > 0, z, np.sign(num) * np.inf)


class PredictedMismatch:
    """The predicted mismatch as a bound model of :mod:`tfprec.planning.search`.

    ``cw``, ``ca``: normalized per-class gains [N, K, L] (:func:`class_terms`).
    ``shift``: None for the pure Gaussian model (``model="gaussian"``), or
    the relative weight shifts [L, 15, N, K] (:func:`shift_terms`) for the
    ``"shift"`` model, in which the weights' rounding moves each margin by
    its known shift and only the activations' rounding is Gaussian noise
    (``cw`` is then unused).
    ``value(bw, ba)`` is the predicted mismatch (probability) at bits
    ``bw``, ``ba``; ``reset`` / ``moves`` / ``take`` keep the per-(example,
    class) state and update it incrementally (one removed activation bit
    multiplies a tensor's variance by 4; one removed weight bit swaps one
    table entry of the shift sum).  ``moves`` scores only the examples
    that one move could bring to some z = (m + mu)/sigma below 8.5 (the
    others' flip probability is 0 before and after it, see
    :func:`flip_from_z`), so it agrees with :meth:`value` exactly.
    """

    def __init__(self, cw, ca, form: str = DEFAULT_FORM, shift=None,
                 label_col=None, count_gains: bool = False):
        self.sw = np.asarray(cw, float)
        self.sa = np.asarray(ca, float)
        self.form = _check_form(form)
        self.shift = None if shift is None else np.asarray(shift, float)
        # label_col [N] (predicted accuracy drop): -2 where the float decision
        # is right (its flip is a lost answer), the kept row of the true
        # class where it is wrong (that class winning is a gained answer),
        # -1 where the true class is not kept (no gain counted)
        self.label_col = None if label_col is None else np.asarray(label_col, int)
        self.count_gains = bool(count_gains)
        if self.shift is not None:
            nl, nb, n, k = self.shift.shape
            if (n, k, nl) != self.sa.shape or nb != MAX_BITS - MIN_BITS + 1:
                raise PlanError(f"weight-shift tables of shape {self.shift.shape} "
                                f"do not fit per-class gains of shape "
                                f"{self.sa.shape} (want [L, 15, N, K])")

    @property
    def model(self) -> str:
        """"shift" or "gaussian"."""
        return "gaussian" if self.shift is None else "shift"

    def _v(self, bw, ba) -> np.ndarray:
        return (self.sw @ 4.0 ** (1 - np.asarray(bw, float))
                + self.sa @ 4.0 ** (1 - np.asarray(ba, float)))

    def _mu(self, bw) -> np.ndarray:
        """Relative shift sum mu/m [N, K] at weight bits ``bw``."""
        idx = np.asarray(bw, int) - MIN_BITS
        return self.shift[np.arange(len(idx)), idx].sum(0)

    def _z(self, bw, ba) -> np.ndarray:
        if self.shift is None:
            with np.errstate(divide="ignore"):
                return 1.0 / np.sqrt(2.0 * self._v(bw, ba))
        va = self.sa @ 4.0 ** (1 - np.asarray(ba, float))
        return _z_shift(1.0 + self._mu(bw), va)

    @property
    def criterion(self) -> str:
        """"mismatch" or "accuracy_drop" (with labels)."""
        return "mismatch" if self.label_col is None else "accuracy_drop"

    def _outcome(self, z: np.ndarray, idx=None) -> np.ndarray:
        """Per-example value from z [n, ..., K] (examples ``idx`` of the
        gains, all when None): the flip probability, or with labels the
        expected lost (+) or gained (-) correct answer."""
        flip = flip_from_z(z, self.form)
        if self.label_col is None:
            return flip
        col = self.label_col if idx is None else self.label_col[idx]
        col = col.reshape(col.shape + (1,) * (flip.ndim - 1))
        if not self.count_gains:
            return np.where(col == -2, flip, 0.0)
        gain = help_from_z(z, np.broadcast_to(np.maximum(col, -1), flip.shape))
        return np.where(col == -2, flip, -gain)

    def per_example(self, bw, ba) -> np.ndarray:
        """Per example [N] at bits ``bw``, ``ba``: the flip probability
        (with labels: + the probability of losing a right answer, - that
        of gaining one)."""
        return self._outcome(self._z(bw, ba))

    def value(self, bw, ba) -> float:
        """The predicted mismatch (with labels: the predicted accuracy
        drop) at bits ``bw``, ``ba`` (probability, a fraction of examples)."""
        return float(np.mean(self.per_example(bw, ba)))

    def gradient(self, bw, ba) -> tuple:
        """d(predicted mismatch)/d u_T for u_T = 4^(1-B_T) at ``bw``, ``ba``:
        (weights [L], activations [L]), probability per unit of u.  In the
        ``"shift"`` model the weights' entries are secant slopes (the change
        from one bit less, or one more at 2 bits, over the change of u),
        clipped at 0."""
        bw = np.asarray(bw, int)
        ba = np.asarray(ba, int)
        if self.label_col is not None:
            return self._secant(bw, ba, "w"), self._secant(bw, ba, "a")
        if self.shift is None:
            v = self._v(bw, ba)
            num = np.ones_like(v)
        else:
            v = self.sa @ 4.0 ** (1 - ba.astype(float))
            num = 1.0 + self._mu(bw)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            z = num / np.sqrt(2.0 * v)
            # d Phi(-z)/dv = phi(z) * z / (2 v)
            dens = np.where(v > 0, np.exp(-0.5 * z * z) / np.sqrt(2 * np.pi) * z
                            / (2.0 * v), 0.0)
            if self.form == "independent":
                # d(1 - prod Phi(z_j))/dv_i = prod_j Phi(z_j) / Phi(z_i) * dPhi(-z_i)/dv_i
                keep = np.exp(log_ndtr(z).sum(-1, keepdims=True) - log_ndtr(z))
                dens = dens * keep
        dens = np.nan_to_num(dens)
        n = v.shape[0]
        ga = np.einsum("nk,nkl->l", dens, self.sa) / n
        if self.shift is None:
            return np.einsum("nk,nkl->l", dens, self.sw) / n, ga
        return self._secant(bw, ba, "w"), np.maximum(ga, 0.0)

    def _secant(self, bw, ba, which: str) -> np.ndarray:
        """Secant slopes of :meth:`value` in u = 4^(1-B) per tensor of
        ``which`` ("w" / "a"): one bit less (one more at 2 bits), clipped at
        0."""
        p0 = self.value(bw, ba)
        bits = bw if which == "w" else ba
        out = np.zeros(len(bits))
        for t in range(len(bits)):
            b2 = bits.copy()
            b2[t] += -1 if bits[t] > MIN_BITS else 1
            du = 4.0 ** (1 - b2[t]) - 4.0 ** (1 - bits[t])
            v = self.value(b2, ba) if which == "w" else self.value(bw, b2)
            out[t] = max((v - p0) / du, 0.0)
        return out

    # ------------------------------------------------- search interface
    def reset(self, bw, ba) -> float:
        self.bw = np.array(bw, int)
        self.ca = self.sa * 4.0 ** (1 - np.asarray(ba, float))     # [N, K, L]
        if self.shift is None:
            self.cw = self.sw * 4.0 ** (1 - np.asarray(bw, float))
            self.v = self.cw.sum(2) + self.ca.sum(2)               # [N, K]
            self.mu = np.zeros_like(self.v)
        else:
            self.v = self.ca.sum(2)
            self.mu = self._mu(self.bw)
        self._update()
        return self.cur

    def _update(self) -> None:
        self.z = _z_shift(1.0 + self.mu, self.v)
        self.p = self._outcome(self.z)                             # [N]
        self.cur = float(np.mean(self.p))

    def _weight_steps(self) -> np.ndarray:
        """Change of mu/m [L, N, K] of one weight bit less per tensor (0 at
        2 bits, which the searches never lower)."""
        idx = self.bw - MIN_BITS
        t = np.arange(len(idx))
        return self.shift[t, np.maximum(idx - 1, 0)] - self.shift[t, idx]

    def moves(self, bw, ba):
        """(new value, value added) for removing one bit of each weight and
        of each activation tensor: four arrays over layers."""
        n = self.v.shape[0]
        if self.shift is None:
            with np.errstate(divide="ignore"):   # one move at most quadruples v
                zmin = 1.0 / np.sqrt(2.0 * self.v.max(1))
            act = np.flatnonzero(zmin < 2.0 * _Z_FAR)     # z at least halves
            cands = [3.0 * self.cw[act], 3.0 * self.ca[act]]     # dv [n_act, K, L]
            dmu = [0.0, 0.0]
        else:
            steps = self._weight_steps()                          # [L, N, K]
            # Lower bound on z after any one move: mu drops by at most the
            # largest weight step, v at most quadruples.
            worst = 1.0 + self.mu - np.abs(steps).max(0)
            zlow = np.where(worst > 0, _z_shift(worst, 4.0 * self.v), -np.inf)
            act = np.flatnonzero(zlow.min(1) < _Z_FAR)
            cands = [np.zeros((len(act), 1, 1)), 3.0 * self.ca[act]]
            dmu = [np.moveaxis(steps[:, act], 0, 2), 0.0]        # [n_act, K, L]
        base = self.p[act].sum()
        v = self.v[act][:, :, None]
        mu = self.mu[act][:, :, None]
        out = []
        for dv, dm in zip(cands, dmu):
            if self.shift is None:
                with np.errstate(divide="ignore"):
                    z = 1.0 / np.sqrt(2.0 * (v + dv))
            else:
                z = _z_shift(1.0 + mu + dm, v + dv)
            z = np.broadcast_to(z, (len(act), self.v.shape[1], len(self.bw)))
            pn = self._outcome(np.moveaxis(z, 2, 1), act)          # [n_act, L]
            d = (pn.sum(0) - base) / n
            out += [self.cur + d, d]
        return tuple(out)

    def take(self, which: str, i: int, delta: float) -> None:
        if which == "w":
            if self.shift is None:
                self.v += 3.0 * self.cw[:, :, i]
                self.cw[:, :, i] *= 4.0
            else:
                j = self.bw[i] - MIN_BITS
                self.mu += self.shift[i, j - 1] - self.shift[i, j]
            self.bw[i] -= 1
        else:
            self.v += 3.0 * self.ca[:, :, i]
            self.ca[:, :, i] *= 4.0
        self._update()


def label_columns(gains, labels) -> np.ndarray:
    """Per example of ``gains`` [N]: -2 where the float decision is the label,
    else the kept row (column of ``class_index``) of the label, -1 when
    that class is not kept.

    Args:
      gains: per-class gains of the exact pass (``top_k=None``: every wrong
        class is a row, so the float decision is the class no row holds).
      labels: N integer class ids in 0..M-1 of the gains' examples, in
        their order.

    Raises:
      PlanError: gains without per-class data, or from the top-k pass;
        labels of the wrong length, not integers, or out of 0..M-1.
    """
    ci = getattr(gains, "class_index", None)
    if ci is None:
        raise PlanError("the predicted accuracy drop needs noise_gains(..., "
                        "per_class=True)")
    ci = np.asarray(ci, int)
    m = int(gains.num_classes)
    if ci.shape[1] != m - 1:
        raise PlanError(f"the predicted accuracy drop needs the exact per-class "
                        f"pass (top_k=None: {m - 1} rows per example), these gains "
                        f"keep {ci.shape[1]}")
    lab = np.asarray(labels)
    if lab.ndim != 1 or len(lab) != len(ci) or not np.issubdtype(lab.dtype, np.number) \
            or not np.all(np.isfinite(lab)) or np.any(lab != np.round(lab)) \
            or np.any((lab < 0) | (lab >= m)):
        raise PlanError(f"labels must be {len(ci)} integer class ids in 0..{m - 1} "
                        f"(one per example of the gains, in order), got shape "
                        f"{lab.shape} dtype {lab.dtype}")
    lab = lab.astype(int)
    decision = m * (m - 1) // 2 - ci.sum(1)
    hit = ci == lab[:, None]
    col = np.where(hit.any(1), hit.argmax(1), -1)
    return np.where(decision == lab, -2, col)


def _model(gains, form: str, model: str = "shift", labels=None,
           count_gains: bool = False) -> PredictedMismatch:
    model = _check_model(model)
    shift = shift_terms(gains) if model == "shift" else None
    col = None if labels is None else label_columns(gains, labels)
    return PredictedMismatch(*class_terms(gains), form=form, shift=shift,
                             label_col=col, count_gains=count_gains)


def _bits_of(plan) -> tuple:
    # a layer without an activation format (act_bits None) has zero
    # activation terms: any placeholder bits will do
    from tfprec.planning.plan import bit_arrays
    return bit_arrays(plan.layers)


def predicted_mismatch(plan: PrecisionPlan, gains, form: str = DEFAULT_FORM,
                       model: str = DEFAULT_MODEL) -> float:
    """Predicted mismatch probability of ``plan`` (an estimate, not a bound).

    The mean over the gains' examples of each example's flip probability
    (module doc).  ``model="shift"`` (default): class i overtakes y with
    probability Phi(-(m_i + mu_i) / sigma_i), with mu_i(x) = sum_T
    d_{T,B_T,i}(x) the known margin shifts of the plan's weight rounding
    (``gains.class_shift``) and sigma_i^2 = 2 m_i^2 sum_T 4^(1-B_{A,T})
    R_{A,T}^2 s_hat_{A,T,i}(x) / 24 the activations' rounding noise.
    ``model="gaussian"``: weights as noise too, mu_i = 0 and
    v_i(x) = sum_T 4^(1-B_T) R_T^2 s_hat_{T,i}(x) / 24 over weights and
    activations, Phi(-1 / sqrt(2 v_i(x))).  Classes combine as
    1 - prod_i Phi(z_i) (``form="independent"``) or
    min(1, sum_i Phi(-z_i)) (``form="union"``).  Steps are
    Delta_T = R_T 2^(1-B_T) with the plan's bits and the gains' range
    scales R_T.  With the top-k estimator only the k closest classes are
    counted.

    Args:
      plan: a :class:`PrecisionPlan` of the model the gains were computed on.
      gains: :class:`tfprec.NoiseGains` from ``noise_gains(..., per_class=True)``.
      form: "independent" or "union".
      model: "shift" or "gaussian".

    Returns:
      The predicted mismatch (probability in [0, 1]).

    Raises:
      PlanError: the gains lack per-class data (or, for "shift", the
        weight-shift tables), the plan's layers are not the gains' layers,
        its weight ranges are not the gains' (the shift tables are for
        those), or ``form`` / ``model`` is unknown.
    """
    form = _check_form(form)
    model = _check_model(model)
    if [l.name for l in gains.layers] != plan.names:
        raise PlanError(f"plan layers {plan.names} do not match the gains' "
                        f"layers {[l.name for l in gains.layers]}")
    if model == "shift":
        for l, g in zip(plan.layers, gains.layers):
            if l.weight_range != g.r_w or (getattr(l, "weight_channel_ranges", None)
                                           != getattr(g, "r_w_channels", None)):
                raise PlanError(f"plan layer {l.name!r} has weight range(s) "
                                f"{l.weight_range:g} / {l.weight_channel_ranges}, the "
                                f"gains' shift tables are for R_W = {g.r_w:g} / "
                                f"{g.r_w_channels} (per channel); use model='gaussian'")
    return _model(gains, form, model).value(*_bits_of(plan))


def predicted_accuracy_drop(plan: PrecisionPlan, gains, labels, form: str = DEFAULT_FORM,
                            model: str = DEFAULT_MODEL,
                            count_gains: bool = False) -> float:
    """Predicted accuracy drop of ``plan`` (a fraction of examples; x 100
    for percentage points): an estimate, not a bound.

    The same per-(example, class) model as :func:`predicted_mismatch`
    (z_i = (m_i + mu_i) / sigma_i), with the labels of the gains' examples:
    an example the float model gets right loses its answer with its flip
    probability (1 - prod_i Phi(z_i), or the union form).  Default: the
    mean of these losses, the right answers expected to be lost (the
    examples the float model gets wrong count 0).  ``count_gains=True``
    also subtracts the wrong examples expected to be fixed, with the
    probability that the true class overtakes the float decision and no
    other class does, Phi(-z_t) prod_{i != t} Phi(z_i): the symmetric
    estimate, but not one to plan against: gains can be bought by flipping
    more decisions, and a plan optimized with them over-flips (CIFAR-10
    VGG: a plan predicted to lose 0.004 % lost 1.4 pp).  Either way a
    near-tie among wrong classes, which the mismatch counts, does not
    count, so an allocation for an accuracy target
    (``cost_aware_plan(..., criterion="predicted", labels=...)``) plans
    against the losses.

    Args:
      plan: a :class:`PrecisionPlan` of the gains' model.
      gains: from ``noise_gains(x, per_class=True)`` (exact pass, no top_k).
      labels: the N class ids of the examples of x, in order.
      form, model: as :func:`predicted_mismatch`.
      count_gains: also subtract the expected fixed answers.

    Returns:
      The predicted drop, a fraction in [0, 1] ([-1, 1] with count_gains).

    Raises:
      PlanError: as :func:`predicted_mismatch`, and bad labels (see
        :func:`label_columns`).
    """
    form = _check_form(form)
    model = _check_model(model)
    predicted_mismatch(plan, gains, form, model)          # the same checks
    if labels is None:
        raise PlanError("predicted_accuracy_drop needs the labels (class ids) of "
                        "the gains' examples")
    return _model(gains, form, model, labels,
                  inputs.flag("count_gains", count_gains, error=PlanError)
                  ).value(*_bits_of(plan))


def _linearized_gains(gains, gw, ga):
    """A copy of ``gains`` whose normalized gains are ``gw``, ``ga`` (a
    shared tensor's on its first reader; 0 elsewhere in the group)."""
    layers = []
    for g, w, a in zip(gains.layers, gw, ga):
        e_w = w / g.r_w ** 2
        e_a = a / g.r_a ** 2
        layers.append(dataclasses.replace(
            g, e_w=e_w, e_a=e_a, e_a_shared=None if g.e_a_shared is None else e_a))
    lead = _leads(gains)
    for i, j in enumerate(lead):                 # a group reads its leader's gain
        if j != i:
            layers[i] = dataclasses.replace(layers[i], e_a=layers[j].e_a,
                                            e_a_shared=layers[j].e_a_shared)
    return dataclasses.replace(gains, layers=tuple(layers))


