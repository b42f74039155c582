"""The per-(example, class) flip model behind the mismatch predictor.

:mod:`tfprec.planning.predict` states the model and its public functions;
this module holds the arithmetic: flip probabilities from z_i = (m_i +
mu_i) / sigma_i (:func:`flip_from_z`, :func:`help_from_z`) and
:class:`PredictedMismatch`, the prediction as a bound model of
:mod:`tfprec.planning.search`, vectorized over examples, with the move
table of each bit state it is asked for memoized.
"""
from __future__ import annotations

import numpy as np
from scipy.special import log_ndtr, ndtr

from tfprec.errors import PlanError
from tfprec.fixedpoint import MAX_BITS, MIN_BITS

#: Flip-probability forms of one example (see the module doc).
FORMS = ("independent", "union")
DEFAULT_FORM = "independent"


def _check_form(form) -> str:
    if not isinstance(form, str) or form not in FORMS:
        raise PlanError(f"form must be one of {FORMS}, got {form!r}")
    return form


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

#: Move tables :meth:`PredictedMismatch.moves` keeps (bits -> table) before
#: it starts again; a plan visits a few hundred states.
MOVES_MEMO_SIZE = 20000


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


def flip_to_class(z: np.ndarray, form: str = DEFAULT_FORM) -> np.ndarray:
    """Per (example, class) probability [..., K] that the decision moves to
    the class of each kept row: the flip probability
    (:func:`flip_from_z`) shared among the classes in proportion to their
    own overtaking probabilities Phi(-z_i), which sum to 1 over the classes
    that can overtake (several overtaking at once: the decision goes to
    one of them).  Classes with z_i >= 8.5 get 0."""
    z = np.asarray(z, float)
    near = z < _Z_FAR
    q = np.zeros(z.shape)
    q[near] = ndtr(-z[near])
    tot = q.sum(-1, keepdims=True)          # 0 only where every q is 0
    return flip_from_z(z, form)[..., None] * q / np.where(tot > 0, tot, 1.0)


def _matvec(a: np.ndarray, x: np.ndarray) -> np.ndarray:
    """a [N, K, L] @ x [L] as one 2-D product: [N, K]."""
    return (a.reshape(-1, a.shape[-1]) @ x).reshape(a.shape[:-1])


def _z_shift(num: np.ndarray, v: np.ndarray) -> np.ndarray:
    """z = num / sqrt(2 v) with num = 1 + mu/m and v = sigma^2 / (2 m^2);
    without noise (v = 0) the flip is certain (num < 0), impossible (num >
    0) or a coin toss (num = 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        z = num / np.sqrt(2.0 * v)
        sure = np.where(num == 0, 0.0, np.sign(num) * np.inf)
    return np.where(v > 0, z, sure)


class PredictedMismatch:
    """The predicted mismatch as a bound model of :mod:`tfprec.planning.search`.

    ``cw``, ``ca``: normalized per-class gains [N, K, L] (:func:`class_terms`).
    ``shift``: None for the pure Gaussian model (``model="gaussian"``), or
    the relative weight shifts [L, 15, N, K] (:func:`shift_terms`) for the
    ``"shift"`` model, in which the weights' rounding moves each margin by
    its known shift; ``act_shift``: the relative activation shifts of the
    float activations' rounding, same shape (None: zero, the model of gains
    made before these tables).  Tables are exact up to ``table_max_bits``;
    a tensor planned wider is Gaussian noise instead (its table entries are
    0): weights at bits above it add 4^(1-B) ``cw`` to the variance.
    ``input_noise`` ([2, L, 15, L], ``NoiseGains.input_noise``) and
    ``act_range`` (R_A per layer) share each activation's rounding between
    its known shift and Gaussian noise: with upstream noise nu_l^2 at layer
    l's input (the table's entries of the plan's bits, added), the shift
    enters mu as rho_l x shift and the variance as (1 - rho_l^2) x
    variance, rho_l from the coherence table ``coherence`` [L, 9, S] at
    spreads ``spreads`` (or exp(-2 pi^2 nu_l^2 / Delta_l^2) without it;
    :meth:`factors`);
    without the table both count in full (the model of gains made before
    it).  ``value(bw, ba)`` is the predicted mismatch (probability) at bits
    ``bw``, ``ba``; ``reset`` / ``moves`` / ``take`` are the search
    interface: ``reset`` computes the per-(example, class) state from the
    bits, ``take`` only lowers a bit (the state is recomputed when next
    needed), ``moves`` scores every one-bit move from that state (Gaussian
    model: one removed bit multiplies a tensor's variance by 4; shift
    model: a move swaps a table entry and changes the factors of the layers
    below it, so every (example, class) a move can reach is re-scored for
    each move) and memoizes the table by the bits.
    ``moves`` scores only the examples that one move could bring to some z
    = (m + mu)/sigma below 8.5 (the others' flip probability is 0 before
    and after it, see :func:`flip_from_z`), so it agrees with
    :meth:`value` exactly.
    """

    def __init__(self, cw, ca, form: str = DEFAULT_FORM, shift=None,
                 label_col=None, count_gains: bool = False, act_shift=None,
                 input_noise=None, act_range=None, table_max_bits: int = MAX_BITS,
                 coherence=None, spreads=None, drop_weights=None):
        self.sw = np.asarray(cw, float)
        self.sa = np.asarray(ca, float)
        self._memo = {}                 # bits -> move table (see moves)
        self._stale = False
        self.form = _check_form(form)
        self.shift = None if shift is None else np.asarray(shift, float)
        if act_shift is not None and self.shift is None:
            raise PlanError("activation-shift tables need the weight-shift tables "
                            "(model 'shift')")
        self.has_act_tables = act_shift is not None
        self.act_shift = (np.asarray(act_shift, float) if act_shift is not None else
                          None if self.shift is None else np.zeros_like(self.shift))
        self.tmax = int(table_max_bits)
        # upstream noise (coherence factors): [2, L, 15, L] table and R_A [L]
        self.noise = None
        if input_noise is not None and self.has_act_tables:
            self.noise = np.asarray(input_noise, float)
            self.r_a2 = np.asarray(act_range, float) ** 2
            nl = self.sa.shape[2]
            if self.noise.shape != (2, nl, MAX_BITS - MIN_BITS + 1, nl) \
                    or self.r_a2.shape != (nl,):
                raise PlanError(f"input-noise table of shape {self.noise.shape} and "
                                f"{self.r_a2.shape} activation ranges do not fit "
                                f"{nl} layers (want [2, L, 15, L] and [L])")
        # coherence table f [L, 9, S] at spreads s = nu / Delta (None: rho)
        self.coh = None
        if coherence is not None and self.noise is not None:
            self.coh = np.asarray(coherence, float)
            self.spreads = np.asarray(spreads, float)
            if self.coh.shape != (self.sa.shape[2], self.tmax - MIN_BITS + 1,
                                  len(self.spreads)):
                raise PlanError(f"coherence table of shape {self.coh.shape} does not "
                                f"fit {self.sa.shape[2]} layers, bits 2..{self.tmax} "
                                f"and {len(self.spreads)} spreads")
        # label_col [N] (predicted accuracy drop): -2 where the float decision
        # is right (its flip is a lost answer), the kept row of the true
        # class where it is wrong (that class winning is a gained answer),
        # -1 where the true class is not kept (no gain counted)
        self.label_col = None if label_col is None else np.asarray(label_col, int)
        self.count_gains = bool(count_gains)
        # drop_weights [N, K] (label-free expected accuracy drop): p_y - p_i,
        # what a flip to the class of row i costs in expected right answers
        # under the float model's own softmax
        self.drop_w = None if drop_weights is None else np.asarray(drop_weights, float)
        if self.drop_w is not None and self.drop_w.shape != self.sa.shape[:2]:
            raise PlanError(f"drop weights of shape {self.drop_w.shape} do not fit "
                            f"per-class gains of shape {self.sa.shape} (want [N, K])")
        for what, t in (("weight", self.shift), ("activation", self.act_shift)):
            if t is None:
                continue
            nl, nb, n, k = t.shape
            if (n, k, nl) != self.sa.shape or nb != MAX_BITS - MIN_BITS + 1:
                raise PlanError(f"{what}-shift tables of shape {t.shape} "
                                f"do not fit per-class gains of shape "
                                f"{self.sa.shape} (want [L, 15, N, K])")

    @property
    def model(self) -> str:
        """"shift" or "gaussian"."""
        return "gaussian" if self.shift is None else "shift"

    def _v(self, bw, ba) -> np.ndarray:
        return (self.sw @ 4.0 ** (1 - np.asarray(bw, float))
                + self.sa @ 4.0 ** (1 - np.asarray(ba, float)))

    def nu2(self, bw, ba) -> np.ndarray:
        """Upstream noise nu_l^2 [L] at each layer's input (squared
        activation units): the input-noise table's entries of the plan's
        weight and activation bits, added over source tensors."""
        t = np.arange(len(bw))
        return (self.noise[0, t, np.asarray(bw, int) - MIN_BITS].sum(0)
                + self.noise[1, t, np.asarray(ba, int) - MIN_BITS].sum(0))

    def _fg(self, nu2, ba) -> tuple:
        """(f, g) of :meth:`factors` from nu^2 and activation bits of any
        (equal) shape whose first axis is the layer."""
        ba = np.asarray(ba, float)
        tabled = ba <= self.tmax
        if self.noise is None:
            return tabled.astype(float), np.ones(ba.shape)
        d2 = self.r_a2.reshape((-1,) + (1,) * (ba.ndim - 1)) * 4.0 ** (1 - ba)
        with np.errstate(divide="ignore", invalid="ignore"):
            s2 = np.where(d2 > 0, np.maximum(nu2, 0.0) / d2, 0.0)    # (nu / Delta)^2
        rho = (np.exp(-2.0 * np.pi ** 2 * s2) if self.coh is None
               else self._coherent(np.sqrt(s2), ba))
        return np.where(tabled, rho, 0.0), np.where(tabled, 1.0 - rho * rho, 1.0)

    def _coherent(self, sp, ba) -> np.ndarray:
        """The coherence table at spreads ``sp`` and bits ``ba`` (same shape,
        first axis the layer), linear between its spreads, its last value
        above them, clipped to [0, 1]."""
        grid = self.spreads
        lay = np.arange(sp.shape[0]).reshape((-1,) + (1,) * (sp.ndim - 1))
        bi = np.clip(ba.astype(int), MIN_BITS, self.tmax) - MIN_BITS
        j = np.clip(np.searchsorted(grid, sp, side="right") - 1, 0, len(grid) - 2)
        t = np.clip((sp - grid[j]) / (grid[j + 1] - grid[j]), 0.0, 1.0)
        f = self.coh[lay, bi, j] * (1.0 - t) + self.coh[lay, bi, j + 1] * t
        return np.clip(f, 0.0, 1.0)

    def factors(self, bw, ba) -> tuple:
        """(f, g) [L]: the activation shifts enter mu as f_l x shift and the
        activations' variance as g_l x variance, f = rho_l, g = 1 - rho_l^2.
        With a coherence table (``coherence``, ``spreads``: gains'
        ``act_coherence``), rho_l is its entry at B_A and the spread s_l =
        nu_l / Delta_l (Delta_l = R_A 2^(1 - B_A)): the share of the rounding
        error that stays coherent under upstream noise of variance nu_l^2,
        measured on the layer's own input values.  Without it, rho_l =
        exp(-2 pi^2 s_l^2), the first harmonic of a uniformly spread
        rounding error.  Without an input-noise table f = g = 1; above
        ``table_max_bits`` f = 0 (no table) and g = 1."""
        return self._fg(None if self.noise is None else self.nu2(bw, ba), ba)

    def _wvar(self, bw) -> np.ndarray:
        """Variance [N, K] of the weights planned above ``table_max_bits``."""
        bw = np.asarray(bw, float)
        return self.sw @ np.where(bw > self.tmax, 4.0 ** (1 - bw), 0.0)

    def _act_entries(self, ba) -> np.ndarray:
        """Relative activation shifts [N, K, L] at activation bits ``ba``."""
        ia = np.asarray(ba, int) - MIN_BITS
        return np.moveaxis(self.act_shift[np.arange(len(ia)), ia], 0, 2)

    def _mu_w(self, bw) -> np.ndarray:
        idx = np.asarray(bw, int) - MIN_BITS
        return self.shift[np.arange(len(idx)), idx].sum(0)

    def _z(self, bw, ba) -> np.ndarray:
        if self.shift is None:
            with np.errstate(divide="ignore"):
                return 1.0 / np.sqrt(2.0 * self._v(bw, ba))
        f, g = self.factors(bw, ba)
        mu = self._mu_w(bw) + _matvec(self._act_entries(ba), f)   # relative shifts
        va = _matvec(self.sa, 4.0 ** (1 - np.asarray(ba, float)) * g) + self._wvar(bw)
        return _z_shift(1.0 + mu, va)

    @property
    def criterion(self) -> str:
        """"mismatch" or "accuracy_drop" (with labels or drop weights)."""
        return ("mismatch" if self.label_col is None and self.drop_w is None
                else "accuracy_drop")

    def _outcome(self, z: np.ndarray, idx=None) -> np.ndarray:
        """Per-example value from z [n, ..., K] (examples ``idx`` of the
        gains, all when None): the flip probability, or with labels the
        expected lost (+) or gained (-) correct answer, or with drop
        weights the expected change of right answers (sum over classes of
        :func:`flip_to_class` x p_y - p_i)."""
        if self.drop_w is not None:
            w = self.drop_w if idx is None else self.drop_w[idx]
            w = w.reshape((w.shape[0],) + (1,) * (np.ndim(z) - 2) + (w.shape[1],))
            return (flip_to_class(z, self.form) * w).sum(-1)
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
        ``"shift"`` model and with labels, secant slopes (the change from
        one bit less, or one more at 2 bits, over the change of u), clipped
        at 0."""
        bw = np.asarray(bw, int)
        ba = np.asarray(ba, int)
        if self.label_col is not None or self.drop_w is not None \
                or self.shift is not None:
            return self._secant(bw, ba, "w"), self._secant(bw, ba, "a")
        v = self._v(bw, ba)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            z = 1.0 / np.sqrt(2.0 * v)
            # d Phi(-z)/dv = phi(z) * z / (2 v)
            dens = np.where(v > 0, np.exp(-0.5 * z * z) / np.sqrt(2 * np.pi) * z
                            / (2.0 * v), 0.0)
            if self.form == "independent":
                # d(1 - prod Phi(z_j))/dv_i = prod_j Phi(z_j) / Phi(z_i) * dPhi(-z_i)/dv_i
                keep = np.exp(log_ndtr(z).sum(-1, keepdims=True) - log_ndtr(z))
                dens = dens * keep
        dens = np.nan_to_num(dens)
        n = v.shape[0]
        return (np.einsum("nk,nkl->l", dens, self.sw) / n,
                np.einsum("nk,nkl->l", dens, self.sa) / n)

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
        """Sets the bits and recomputes the state from them; returns the
        value there."""
        self._stale = False
        self.bw = np.array(bw, int)
        self.ba = np.array(ba, int)
        self.ca = self.sa * 4.0 ** (1 - np.asarray(ba, float))     # [N, K, L]
        self.cw = self.sw * 4.0 ** (1 - np.asarray(bw, float))
        if self.shift is None:
            self.v = self.cw.sum(2) + self.ca.sum(2)               # [N, K]
            self.mu = np.zeros_like(self.v)
        else:
            self.mu_w = self._mu_w(self.bw)
            self.acts = self._act_entries(self.ba)                 # [N, K, L]
            self._refresh()
        self._update()
        return self.cur

    def _refresh(self) -> None:
        """Shift model: factors, v and mu from the bits, ``mu_w``, ``acts``,
        ``ca`` and ``cw``."""
        self.nu = self.nu2(self.bw, self.ba) if self.noise is not None else None
        self.f, self.g = self._fg(self.nu, self.ba)
        self.vw = _matvec(self.cw, (self.bw > self.tmax).astype(float))
        self.v = _matvec(self.ca, self.g) + self.vw
        self.mu = self.mu_w + _matvec(self.acts, self.f)

    def _update(self) -> None:
        self.z = _z_shift(1.0 + self.mu, self.v)
        self.p = self._outcome(self.z)                             # [N]
        self._cur = float(np.mean(self.p))

    def _steps(self, table, bits) -> np.ndarray:
        """Change of mu/m [L, N, K] of one bit less per tensor of ``table``
        at ``bits`` (0 at 2 bits, which the searches never lower)."""
        idx = bits - MIN_BITS
        t = np.arange(len(idx))
        return table[t, np.maximum(idx - 1, 0)] - table[t, idx]

    def _shift_moves(self):
        """:meth:`moves` of the shift model: a move changes the upstream
        noise of the layers below it, so every (example, class) a move can
        reach is re-scored for each move ([n, K, 2L]; flip_from_z evaluates
        only the near ones)."""
        nl = len(self.bw)
        t = np.arange(nl)
        ba = np.repeat(self.ba[:, None], 2 * nl, 1)                # after each move
        ba[t, nl + t] = np.maximum(self.ba - 1, MIN_BITS)
        nu = None
        if self.noise is not None:                   # nu^2 after each move [L, 2L]
            ib, ia = self.bw - MIN_BITS, self.ba - MIN_BITS
            dw = self.noise[0, t, np.maximum(ib - 1, 0)] - self.noise[0, t, ib]
            da = self.noise[1, t, np.maximum(ia - 1, 0)] - self.noise[1, t, ia]
            nu = self.nu[:, None] + np.concatenate([dw, da]).T
        fm, gm = self._fg(nu, ba)
        # a weight move's variance: x4 above table_max_bits + 1, removed
        # at table_max_bits + 1 (its table starts), none below
        coef = np.where(self.bw > self.tmax + 1, 3.0,
                        np.where(self.bw == self.tmax + 1, -1.0, 0.0))
        steps = self._steps(self.shift, self.bw)                   # [L, N, K]
        asteps = self._steps(self.act_shift, self.ba)
        # Only examples some move could bring to z < 8.5 (or with a flip
        # probability now) are re-scored: mu moves by at most |A| @ max|df|
        # plus the largest step, v grows to at most 4 (C @ max g' + vw).
        df = np.abs(fm - self.f[:, None]).max(1)
        drop = (_matvec(np.abs(self.acts), df) + np.abs(steps).max(0)
                + np.abs(asteps).max(0) * fm[t, nl + t].max())
        worst = 1.0 + self.mu - drop
        vmax = 4.0 * (_matvec(self.ca, gm.max(1)) + self.vw)
        zlow = np.where(worst > 0, _z_shift(worst, vmax), -np.inf)
        act = np.flatnonzero((zlow.min(1) < _Z_FAR) | (self.p != 0))
        acts, ca = self.acts[act], self.ca[act]
        mu = (self.mu_w[act][:, :, None] + acts @ fm)             # [n_act, K, 2L]
        mu[:, :, :nl] += np.moveaxis(steps[:, act], 0, 2)
        mu[:, :, nl:] += np.moveaxis(asteps[:, act], 0, 2) * fm[t, nl + t]
        v = ca @ gm + self.vw[act][:, :, None]
        v[:, :, :nl] += self.cw[act] * coef
        v[:, :, nl:] += 3.0 * ca * gm[t, nl + t]
        z = _z_shift(1.0 + mu, v)
        n = self.v.shape[0]
        pn = self._outcome(np.moveaxis(z, 2, 1), act)             # [n_act, 2L]
        d = (pn.sum(0) - self.p[act].sum()) / n
        return self.cur + d[:nl], d[:nl], self.cur + d[nl:], d[nl:]

    def moves(self, bw, ba):
        """(new value, value added) for removing one bit of each weight and
        of each activation tensor: four arrays over layers, computed from
        the current bits (after :meth:`reset` and :meth:`take`) and
        memoized by them: a move table depends on the bits alone, not on
        the target a search holds, so the searches of one plan, and the
        plans of a grid of targets made from the same gains (the model is
        cached with them, :func:`tfprec.planning.predict._model`), compute
        each state once."""
        key = (self.bw.tobytes(), self.ba.tobytes())
        hit = self._memo.get(key)
        if hit is None:
            if self._stale:
                self.reset(self.bw, self.ba)
            hit = self._moves()
            for a in hit:
                a.setflags(write=False)
            if len(self._memo) >= MOVES_MEMO_SIZE:
                self._memo.clear()
            self._memo[key] = hit
        return hit

    def _moves(self):
        if self.shift is not None:
            return self._shift_moves()
        n = self.v.shape[0]
        with np.errstate(divide="ignore"):       # one move at most quadruples v
            zmin = 1.0 / np.sqrt(2.0 * self.v.max(1))
        act = np.flatnonzero(zmin < 2.0 * _Z_FAR)         # z at least halves
        base = self.p[act].sum()
        v = self.v[act][:, :, None]
        out = []
        for dv in (3.0 * self.cw[act], 3.0 * self.ca[act]):       # [n_act, K, L]
            with np.errstate(divide="ignore"):
                z = 1.0 / np.sqrt(2.0 * (v + dv))
            pn = self._outcome(np.moveaxis(z, 2, 1), act)          # [n_act, L]
            d = (pn.sum(0) - base) / n
            out += [self.cur + d, d]
        return tuple(out)

    def take(self, which: str, i: int, delta: float) -> None:
        """Removes one bit of weight (``which`` "w") or activation ("a")
        tensor ``i``.  Lazy: the per-(example, class) state is recomputed
        from the bits (:meth:`reset`) only when a move or the value is next
        needed and the move table of the new bits is not memoized."""
        if which == "w":
            self.bw[i] -= 1
        else:
            self.ba[i] -= 1
        self._stale = True

    @property
    def cur(self) -> float:
        """The value at the current bits (see :meth:`value`)."""
        if self._stale:
            self.reset(self.bw, self.ba)
        return self._cur
