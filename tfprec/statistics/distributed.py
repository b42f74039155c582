"""The noise-gain pass over a ``tf.distribute.Strategy``, one or many workers.

:meth:`tfprec.statistics.backward.GainsPass.distributed` builds its step
here.  The same code serves a single-process strategy (``MirroredStrategy``
over local devices, ``OneDeviceStrategy``) and ``MultiWorkerMirroredStrategy``
(several worker processes, each with its local devices).

Design:

* Every worker runs the same program on the same data: it calls
  :func:`tfprec.noise_gains` with the same full ``x`` (same order, same
  ``batch_size``, ``max_examples``, ``seed``), so all workers see the same
  sequence of global batches.  ``batch_size`` is the global batch.
* Each global batch of B examples is passed whole to every replica, which
  keeps only its contiguous shard: with R = ``num_replicas_in_sync`` and
  replica id r (global over the workers, ``replica_id_in_sync_group``), the
  shard is the r-th part of ``numpy.array_split(batch, R)`` (the first
  B mod R replicas get one example more; a replica may get none when B < R).
  The random-sign sketch of the ``top_k`` estimator uses the step seed
  offset by the replica id, so estimates depend on R, not on the workers.
* The per-replica results are all-gathered with collective ops
  (``Strategy.gather`` inside the compiled step, which all-gathers across
  workers under ``MultiWorkerMirroredStrategy``): sums and tie counts are
  added, activation maxima / minima reduced with max / min, and per-example
  rows (``pw``, ``pa`` [L, B]; per-class ``cw``, ``ca``, ``cm``, ``ci``
  [B, ...]) concatenated in replica order, which is example order.  So
  every worker gets the same global results and returns the full
  :class:`~tfprec.statistics.gains.NoiseGains`.
* The step is one ``tf.function`` with a fixed input signature (batch
  dimension None), traced once per strategy: under multi-worker collectives
  every worker must trace and issue the same collectives in the same order,
  which a shape-dependent retrace (for the last, smaller batch) could break.

Collective traffic per batch: 2 L floats per example for ``pw``/``pa``
(plus 2 K L + 2 K per example with ``per_class``; L weight layers, K kept
wrong classes), small next to the backward pass.  Every replica receives
the whole global batch (B input examples) and slices its shard.
"""
from __future__ import annotations

from typing import Callable, Dict

import numpy as np

from tfprec._tf import tf
from tfprec.errors import InvalidDataError

# How each output of the per-replica step is combined over the replicas.
# "sum" / "max" / "min": over the replicas; "concat1": per-example [L, B]
# rows joined along examples (axis 1); "concat0": [B, ...] along axis 0.
REDUCTIONS: Dict[str, str] = {
    "sw": "sum", "sa": "sum", "sh": "sum", "ties": "sum",
    "amax": "max", "amin": "min", "pw": "concat1", "pa": "concat1"}
PER_CLASS_REDUCTIONS: Dict[str, str] = {
    "cw": "concat0", "ca": "concat0", "cm": "concat0", "ci": "concat0"}
CALL_KEY = "_calls"         # each replica's (batch size, seed), to check workers agree
SEED_STRIDE = 1_000_003     # replica r's sketch seed: (seed0, seed1 + r * stride)

Step = Callable[[np.ndarray, np.ndarray], dict]


def shard_range(num_examples: "int | tf.Tensor", replica_id: "int | tf.Tensor",
                num_replicas: int) -> tuple:
    """(start, size) int32 tensors of replica ``replica_id``'s shard of a
    batch of ``num_examples`` (ints or int32 tensors): the
    ``replica_id``-th part of ``numpy.array_split(batch, num_replicas)``,
    whose first ``num_examples % num_replicas`` parts are one longer."""
    n = tf.cast(num_examples, tf.int32)
    rid = tf.cast(replica_id, tf.int32)
    q, r = n // num_replicas, n % num_replicas
    return rid * q + tf.minimum(rid, r), q + tf.cast(rid < r, tf.int32)


def num_workers(strategy: "tf.distribute.Strategy") -> int:
    """Worker processes taking part in ``strategy``'s all-reduces (1 for a
    single-process strategy): replicas in sync over local replicas."""
    local = max(1, len(strategy.extended.worker_devices))
    return max(1, strategy.num_replicas_in_sync // local)


def _check_strategy(strategy) -> None:
    """InvalidDataError for strategies whose ``run`` is not synchronous
    replica execution (parameter servers) or without replicas."""
    ps = getattr(tf.distribute.experimental, "ParameterServerStrategy", None)
    if ps is not None and isinstance(strategy, ps):
        raise InvalidDataError(
            "strategy ParameterServerStrategy is not supported by noise_gains: "
            "use MirroredStrategy or MultiWorkerMirroredStrategy")
    if strategy.num_replicas_in_sync < 1:
        raise InvalidDataError(f"strategy {type(strategy).__name__} has "
                               f"{strategy.num_replicas_in_sync} replicas in sync")


def make_step(strategy: "tf.distribute.Strategy", replica_step: Callable,
              input_spec: "tf.TensorSpec", per_class: bool = False) -> Step:
    """A numpy step over ``strategy``: batch [B, ...] and seed [2] int32 ->
    the dict of :meth:`GainsPass.step` for the whole batch (numpy values).

    Args:
      strategy: the distribution strategy (see the module docstring for the
        multi-worker contract: every worker calls the step on the same
        batches in the same order).
      replica_step: the per-replica pass, (x [b, ...], seed [2] int32) ->
        dict of tensors (``GainsPass._step``); traced under ``strategy.run``.
      input_spec: the batch's spec, batch dimension None, pass dtype.
      per_class: whether ``replica_step`` also returns the per-class rows.

    Raises:
      InvalidDataError: ``strategy`` is a ParameterServerStrategy (when
        made), or, from the step, the workers ran it on batches of different
        sizes or with different seeds (different ``x``, ``batch_size``,
        ``max_examples`` or ``seed``).  A worker with more batches than the
        others waits in the collective until the strategy's
        ``CommunicationOptions.timeout_seconds`` (none by default).
    """
    _check_strategy(strategy)
    reductions = dict(REDUCTIONS, **(PER_CLASS_REDUCTIONS if per_class else {}))
    n_rep = strategy.num_replicas_in_sync

    def on_replica(x, seed):
        ctx = tf.distribute.get_replica_context()
        rid = tf.cast(ctx.replica_id_in_sync_group, tf.int32)
        n = tf.shape(x)[0]
        start, size = shard_range(n, rid, n_rep)
        # An empty shard (B < R) runs on one stand-in example (some ops
        # reject empty batches) whose results are then dropped.
        has = size > 0
        first = tf.minimum(start, tf.maximum(n - 1, 0))
        out = replica_step(x[first:first + tf.maximum(size, 1)],
                           seed + tf.stack([0, rid * SEED_STRIDE]))
        res = {}
        for k, op in reductions.items():
            v = out[k]
            if op == "concat1":
                v = v[:, :size]
            elif op == "concat0":
                v = v[:size]
            else:
                drop = {"sum": 0, "max": -np.inf, "min": np.inf}[op]
                v = tf.where(has, v, tf.cast(drop, v.dtype))[None]
            res[k] = v      # reduced ones with a leading replica axis
        res[CALL_KEY] = tf.stack([n, seed[0], seed[1]])[None]
        return res

    def global_step(x, seed):
        out = strategy.run(on_replica, args=(x, seed))
        res = {}
        for k, op in reductions.items():
            g = strategy.gather(out[k], axis=1 if op == "concat1" else 0)
            if op == "sum":
                g = tf.reduce_sum(g, axis=0)
            elif op == "max":
                g = tf.reduce_max(g, axis=0)
            elif op == "min":
                g = tf.reduce_min(g, axis=0)
            res[k] = g
        res[CALL_KEY] = strategy.gather(out[CALL_KEY], axis=0)
        return res

    run = tf.function(global_step, input_signature=[
        input_spec, tf.TensorSpec([2], tf.int32)], autograph=False)
    dtype = input_spec.dtype.as_numpy_dtype

    def step(b, seed):
        out = run(np.asarray(b, dtype), np.asarray(seed, np.int32))
        _check_calls(np.asarray(out.pop(CALL_KEY)), len(b), seed)
        return {k: np.asarray(v) for k, v in out.items()}
    return step


def _check_calls(calls: np.ndarray, n: int, seed) -> None:
    """InvalidDataError unless every replica (of every worker) ran this step
    on a batch of ``n`` examples with step seed ``seed``: calls [R, 3] rows
    (batch size, seed) as each replica saw them."""
    mine = np.array([n, *np.asarray(seed).tolist()], np.int64)
    for r, row in enumerate(np.asarray(calls, np.int64)):
        if not np.array_equal(row, mine):
            raise InvalidDataError(
                f"strategy replica {r} ran the noise-gain step on a batch of "
                f"{row[0]} examples with step seed {row[1:].tolist()}, this worker "
                f"on {n} examples with seed {mine[1:].tolist()}: under a "
                "multi-worker strategy every worker must call noise_gains with "
                "the same x, batch_size, max_examples and seed")
