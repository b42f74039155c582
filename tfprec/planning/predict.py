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
per_class=True)`` tabulates, for every weight tensor T, bit-width b = 2..10
and kept (example, class) row, the exact margin shift
d_{T,b,i}(x) = (z_y - z_i)(W_T -> Q_b(W_T)) - (z_y - z_i)(W)
(``class_shift``, a forward difference), and a plan's shifts add up over
tensors (first order): mu_i(x) = sum_T d_{T,B_T,i}(x).  Above 10 bits
(``tfprec.statistics.shifts.TABLE_MAX_BITS``) a rounding error is
pseudo-random and tiny: a tensor planned wider adds its Gaussian variance
4^(1-B_T) G_{T,i}(x) instead (this saves 6 of the 15 re-runs per tensor).

The activations' rounding is deterministic too, for each x: at 2-3 bits
most small activations round to zero and the margins move coherently
(CIFAR-10 VGG, one layer's input at 2 bits, the rest float: 11.3 % of
1000 decisions flip; the Gaussian term predicts 2.8 %).  The gains
therefore also tabulate the shift of each margin when only layer l's input
is rounded (``class_act_shift``, :mod:`tfprec.statistics.shifts`), and
mu_i(x) adds the plan's activation shifts as well.  In the quantized
network each activation's input is itself moved by the rounding upstream,
so its rounding error is not exactly the float input's.  How far: the
same re-runs record, for every tensor rounded alone, the mean squared
change of every layer's input (``input_noise``, per nonzero float value),
and the plan's entries add up to the upstream noise nu_l^2 at layer l.
Rounding error is a sawtooth of period Delta_l in the value; Gaussian
noise of variance nu_l^2 under it smooths it.  How much of the error stays
coherent depends on where the values lie in their steps: a uniformly
spread value keeps rho_l = exp(-2 pi^2 nu_l^2 / Delta_l^2) (the first
harmonic), but a ReLU output at 2-3 bits lies mostly in the dead zone
near 0, where the error is -a and survives noise.  So the gains measure it
(``act_coherence``, :func:`tfprec.statistics.shifts.coherence_table`):
rho_l(B, s) = sum_a E[e(a + n)] e(a) / sum_a e(a)^2 over the layer's own
nonzero input values a, e the rounding error at B bits, n ~ N(0, (s
Delta)^2), at spreads s = nu_l / Delta_l of 0..2 (exact expectations,
interpolated in s).  The shift counts rho_l x its table entry, and the
rest, (1 - rho_l^2) of the uniform variance, is Gaussian noise around it:
sigma_i^2 = 2 m_i^2 sum_{T in activations} (1 - rho_T^2) 4^(1-B_T)
G_{T,i}(x).  (CIFAR-10 VGG, the plan of the 0.3 budget of
``benchmarks/peers.py``, on the gains' 1000 images: 158 changed decisions,
105 predicted with the first-harmonic rho, 129 with the table; with
rho_l(2 bits, s = 0.2) = 0.6-0.68 instead of 0.45 on the first
convolutions' inputs.)  Class i overtakes y with probability
Phi(-(m_i + mu_i) / sigma_i), combined over classes by ``form`` as above.
On 19 plans per network, measured on the gains' own images (MNIST MLP,
2000; CIFAR-10 VGG, 1000), at the plans with at least 20 mismatches the
predicted / measured ratio spans 0.90-1.31x (MNIST) and 0.83-1.35x (VGG);
with the shifts and the full variance (the previous model) 0.90-1.47x and
0.97-1.58x; with the shifts alone (rho = 1, no variance) 0.90-1.40x and
0.95-1.36x, but those make each example's prediction a 0/1 step that a
search can exploit.  Gains without
activation tables keep mu to the weights; gains with them but without the
input-noise table count the shifts and the variance in full.
``model="gaussian"`` is the first version (everything as zero-mean
noise), kept for comparison.

It is an *estimate*: the shifts of several layers are added although the
network is non-linear (MNIST MLP, all weights at B bits: the sum's relative
error against the joint shift is 0.14-0.17 at B = 3-4 and 0.04 at B = 8;
at B = 2 it overshoots), and it does not bound the mismatch.  Tied
examples (z_i == z_y) add nothing (their s_hat is zero and their relative
shift is taken as 0).

* :func:`predicted_mismatch`: the prediction for a plan (probability);
* :func:`predicted_accuracy_drop`: with the labels of the gains' examples,
  the expected right answers lost (right examples that flip), a fraction of
  examples; flips of examples the float model already gets wrong do not
  count, so it can be far below the mismatch (CIFAR-10 VGG: 11 changed
  decisions of 1000 for a 0.3 pp drop);
* ``labels=SOFTMAX`` (:data:`SOFTMAX`, :func:`softmax_weights`): the
  label-free expected accuracy drop, each possible flip to class i
  weighted by p_y - p_i of the float model's own softmax, which
  ``benchmarks/peers.py`` and the CLI (``--predicted_drop=softmax``) plan
  accuracy targets and budgets under;
* :class:`PredictedMismatch`: the same as a bound model of
  :mod:`tfprec.planning.search` (value / reset / moves / take), vectorized
  over examples and updated incrementally (a weight move is a lookup in the
  shift tables);
* :func:`tfprec.planning.cost_aware.predicted_cost_aware_plan`: the cheapest plan found whose predicted
  mismatch meets a target (``cost_aware_plan(..., criterion="predicted")``).
"""
from __future__ import annotations

import dataclasses
import weakref

import numpy as np

from tfprec import inputs
from tfprec.errors import PlanError
from tfprec.planning.plan import PrecisionPlan
from tfprec.planning.predict_model import (  # noqa: F401  (re-exported)
    DEFAULT_FORM, FORMS, PredictedMismatch, _check_form, _z_shift, flip_from_z,
    flip_probability, help_from_z)
from tfprec.planning.rules import _leads
from tfprec.statistics.shifts import COHERENCE_SPREADS, TABLE_MAX_BITS
from tfprec.fixedpoint import MAX_BITS

#: Prediction models (see the module doc): known weight and activation
#: shifts plus Gaussian activation noise (default), or everything Gaussian
#: (the first version).
MODELS = ("shift", "gaussian")
DEFAULT_MODEL = "shift"
#: Method string (prefix) of the plans :func:`tfprec.planning.cost_aware.predicted_cost_aware_plan` makes.
METHOD = "cost_aware_predicted"


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
    tensor T's weights are rounded to b = 2..16 bits (index b - 2; 0 above
    the tables' 10 bits).

    Raises:
      PlanError: ``gains`` have no weight-shift tables (``class_shift``).
    """
    sh = getattr(gains, "class_shift", None)
    if sh is None or getattr(gains, "class_margin", None) is None:
        raise PlanError("the mismatch predictor's 'shift' model needs the weight-"
                        "shift tables of noise_gains(..., per_class=True) "
                        "(class_shift); these gains have none: recompute them, "
                        "or use model='gaussian'")
    return _relative(sh, gains.class_margin)


def act_shift_terms(gains):
    """Relative activation shifts [L, 15, N, K] of ``gains``
    (``class_act_shift`` over ``class_margin``, as :func:`shift_terms`):
    the change of margin i, in margins, when only layer l's input tensor
    is rounded to b = 2..16 bits (0 above 10); None for gains without these tables
    (their activations' rounding is then zero-mean noise)."""
    sh = getattr(gains, "class_act_shift", None)
    return None if sh is None else _relative(sh, gains.class_margin)


def _relative(sh, mg) -> np.ndarray:
    mg = np.asarray(mg, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(mg > 0, np.asarray(sh, float) / mg, 0.0)


#: ``labels=SOFTMAX`` (wherever the predicted accuracy drop takes the labels
#: of the gains' examples): the label-free expected accuracy drop, each
#: example's possible flips weighted by what they cost in right answers
#: under the float model's own softmax probabilities (:func:`softmax_weights`).
SOFTMAX = "softmax"


def is_softmax(labels) -> bool:
    """Whether ``labels`` asks for the label-free expected drop (SOFTMAX)."""
    return isinstance(labels, str) and labels == SOFTMAX


def softmax_weights(gains) -> np.ndarray:
    """Per kept (example, class) [N, K]: p_y - p_i, the expected change of
    right answers (probability) when the decision moves from the float
    decision y to class i, under the float model's softmax of its logits
    (p_c = exp(z_c) / sum exp(z), assumed calibrated: y is right with
    probability p_y, i with p_i).  From the gains' margins m_i = z_y - z_i:
    p_y = 1 / (1 + sum_i exp(-m_i)), p_i = p_y exp(-m_i).  A binary
    logit z is the two logits [0, z].  With the top-k pass (``top_k``) only
    the kept classes enter the sum, so p_y is over-estimated by the mass
    of the others (each at least as far as the k-th).

    Raises:
      PlanError: gains without per-class data.
    """
    mg = getattr(gains, "class_margin", None)
    if mg is None:
        raise PlanError("the expected accuracy drop needs noise_gains(..., "
                        "per_class=True)")
    e = np.exp(-np.maximum(np.asarray(mg, float), 0.0))
    p_y = 1.0 / (1.0 + e.sum(1))
    return p_y[:, None] * (1.0 - e)


def label_columns(gains, labels) -> np.ndarray:
    """Per example of ``gains`` [N]: -2 where the float decision is the label,
    else the kept row (column of ``class_index``) of the label, -1 when
    that class is not kept.

    Args:
      gains: per-class gains of the exact pass (``top_k=None``: every wrong
        class is a row, so the float decision is the class no row holds).
      labels: N integer class ids in 0..M-1 of the gains' examples, in
        their order (:data:`SOFTMAX`: checked, and None is returned: the
        label-free drop has no label columns).

    Raises:
      PlanError: gains without per-class data, or from the top-k pass;
        labels of the wrong length, not integers, or out of 0..M-1.
    """
    if is_softmax(labels):
        softmax_weights(gains)
        return None
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
        got = (repr(labels) if isinstance(labels, str)
               else f"shape {lab.shape} dtype {lab.dtype}")
        raise PlanError(f"labels must be {len(ci)} integer class ids in 0..{m - 1} "
                        f"(one per example of the gains, in order), or "
                        f"{SOFTMAX!r} for the label-free expected drop; got {got}")
    lab = lab.astype(int)
    decision = m * (m - 1) // 2 - ci.sum(1)
    hit = ci == lab[:, None]
    col = np.where(hit.any(1), hit.argmax(1), -1)
    return np.where(decision == lab, -2, col)


#: id(gains) -> (weak reference to the gains, {options: model}): the
#: prediction models made from one gains object (see :func:`_model`).
_MODELS: dict = {}
#: Models kept per gains object (one per form, model, labels and
#: count_gains asked for), oldest dropped first.  Each holds its own copy of
#: the gains' per-class tables (relative to the margins), about their size.
_MODELS_PER_GAINS = 2


def _labels_key(labels):
    """A hashable key of ``labels`` (None, SOFTMAX or class ids), or None
    when they cannot be keyed (they are then checked, and refused, by
    :func:`label_columns`)."""
    if labels is None:
        return ("none",)
    if is_softmax(labels):
        return ("softmax",)
    arr = np.asarray(labels)
    if arr.dtype.kind not in "biuf":
        return None
    return ("ids", arr.shape, arr.dtype.str, arr.tobytes())


def _model(gains, form: str, model: str = "shift", labels=None,
           count_gains: bool = False) -> PredictedMismatch:
    """The prediction model of ``gains`` for these options, cached while
    the gains object lives: the plans of a grid of targets made from the
    same gains share one model, and with it the move tables its searches
    memoize (:meth:`PredictedMismatch.moves`).  Callers set its bits
    (``reset``) before a search; ``value`` and ``per_example`` do not
    depend on them."""
    model = _check_model(model)
    lk = _labels_key(labels)
    if lk is None:
        return _build_model(gains, form, model, labels, count_gains)
    key = (form, model, lk, bool(count_gains))
    ident = id(gains)
    entry = _MODELS.get(ident)
    if entry is None or entry[0]() is not gains:
        def forget(ref, ident=ident):
            if _MODELS.get(ident, (None,))[0] is ref:
                del _MODELS[ident]
        entry = (weakref.ref(gains, forget), {})
        _MODELS[ident] = entry
    models = entry[1]
    if key not in models:
        if len(models) >= _MODELS_PER_GAINS:
            del models[next(iter(models))]
        models[key] = _build_model(gains, form, model, labels, count_gains)
    return models[key]


def _build_model(gains, form: str, model: str, labels, count_gains: bool
                 ) -> PredictedMismatch:
    shift = shift_terms(gains) if model == "shift" else None
    act = act_shift_terms(gains) if model == "shift" else None
    drop_w = softmax_weights(gains) if is_softmax(labels) else None
    col = None if labels is None or drop_w is not None else label_columns(gains, labels)
    noise = getattr(gains, "input_noise", None) if act is not None else None
    # gains with the input-noise table have tables up to TABLE_MAX_BITS;
    # earlier ones (and gains made by hand) for every bit-width
    return PredictedMismatch(*class_terms(gains), form=form, shift=shift,
                             label_col=col, count_gains=count_gains, act_shift=act,
                             input_noise=noise,
                             act_range=[l.r_a for l in gains.layers],
                             table_max_bits=MAX_BITS if noise is None else TABLE_MAX_BITS,
                             coherence=getattr(gains, "act_coherence", None),
                             spreads=COHERENCE_SPREADS, drop_weights=drop_w)


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
    (``gains.class_shift``) and rho_T times those of the float
    activations' rounding (``gains.class_act_shift``, when the gains have
    it), and sigma_i^2 = 2 m_i^2 sum_T c_T 4^(1-B_T) R_T^2 s_hat_{T,i}(x) /
    24 the rest: c_T = 1 - rho_T^2 for an activation (rho_T from the
    upstream noise, module doc), and 1 for a tensor planned above the
    tables' 10 bits (its shift is then 0), else 0 for weights.
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
        its weight or activation ranges are not the gains' (the shift
        tables are for those), or ``form`` / ``model`` is unknown.
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
            if (getattr(gains, "class_act_shift", None) is not None and l.act_bits is not None
                    and (l.act_range, l.act_signed) != (g.r_a, g.act_signed)):
                raise PlanError(f"plan layer {l.name!r} has the activation format "
                                f"R_A = {l.act_range:g} (signed {l.act_signed}), the "
                                f"gains' shift tables are for R_A = {g.r_a:g} (signed "
                                f"{g.act_signed}); use model='gaussian'")
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

    ``labels=SOFTMAX`` needs no labels: the expected drop under the float
    model's own softmax, sum_i P(the decision moves to i) (p_y - p_i)
    (:func:`softmax_weights`; the flip probability shared among the
    classes in proportion to Phi(-z_i),
    :func:`tfprec.planning.predict_model.flip_to_class`).  A flip between
    near-tied classes costs about nothing, one of a confident decision
    about one right answer; it counts both losses and gains at the
    model's own odds, from every gains example, where the labelled count
    learns only from the few right examples that flip (``count_gains``
    is refused with it).

    Args:
      plan: a :class:`PrecisionPlan` of the gains' model.
      gains: from ``noise_gains(x, per_class=True)`` (exact pass, no top_k;
        with SOFTMAX the top-k pass too).
      labels: the N class ids of the examples of x, in order, or
        :data:`SOFTMAX`.
      form, model: as :func:`predicted_mismatch`.
      count_gains: also subtract the expected fixed answers.

    Returns:
      The predicted drop, a fraction in [0, 1] ([-1, 1] with count_gains
      or SOFTMAX).

    Raises:
      PlanError: as :func:`predicted_mismatch`, and bad labels (see
        :func:`label_columns`).
    """
    form = _check_form(form)
    model = _check_model(model)
    predicted_mismatch(plan, gains, form, model)          # the same checks
    if labels is None:
        raise PlanError("predicted_accuracy_drop needs the labels (class ids) of "
                        "the gains' examples, or labels=predict.SOFTMAX (label-free)")
    count_gains = inputs.flag("count_gains", count_gains, error=PlanError)
    if count_gains and is_softmax(labels):
        raise PlanError("count_gains=True is for class-id labels: the SOFTMAX "
                        "expected drop already counts the answers a flip may fix")
    return _model(gains, form, model, labels, count_gains
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


