"""noise_gains under tf.distribute strategies: MultiWorkerMirroredStrategy
with two worker processes on this machine, and the shard / reduction logic
of :mod:`tfprec.statistics.distributed` in-process.

The two-worker tests spawn ``tests/multiworker_worker.py`` twice with a
TF_CONFIG cluster of two local workers (free ports), every worker given the
same full calibration data; each must return the gains of the whole data,
equal to a plain single-process :func:`tfprec.noise_gains` computed here
(1e-6 relative in float64, 1e-4 in float32), with per-example and per-class
rows in example order and global tie counts and activation ranges.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import warnings

import numpy as np
import pytest

import tfprec
from tfprec._tf import keras, tf
from tfprec.statistics import distributed

import multiworker_worker

L = keras.layers
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TOL = {"float64": 1e-6, "float32": 1e-4}


def _mlp():
    keras.utils.set_random_seed(3)
    return keras.Sequential([L.Input((12,)), L.Dense(16, activation="relu"),
                             L.Dense(6, bias_initializer="random_normal")])


def _cnn():
    """Conv + BN + clipped ReLU + max pool (whose op rejects empty batches)
    + a tensor read by two Dense layers (one shared quantizer), 10 classes."""
    keras.utils.set_random_seed(5)
    inp = L.Input((8, 8, 1))
    t = L.Conv2D(4, 3, name="conv")(inp)
    t = L.BatchNormalization()(t)
    t = L.MaxPooling2D()(L.ReLU(max_value=2.0)(t))
    t = L.Flatten()(t)
    t = L.Dense(16, activation="relu", name="d1")(t)
    u = L.Add()([L.Dense(12, name="b1")(t), L.Dense(12, name="b2")(t)])
    out = L.Dense(10, name="out", bias_initializer="random_normal")(L.ReLU()(u))
    m = keras.Model(inp, out)
    bn = m.layers[2]
    rng = np.random.default_rng(7)
    bn.set_weights([rng.uniform(0.5, 2, 4), rng.normal(size=4),
                    rng.normal(size=4) * 0.1, rng.uniform(0.5, 2, 4)])
    return m


def _free_ports(n: int) -> list:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _run_workers(tmp_path, model, x, configs, extra=(), timeout=300) -> tuple:
    """Runs two MultiWorkerMirroredStrategy workers on ``model`` and ``x``
    for each noise_gains keyword dict of ``configs``, then each run of
    ``extra`` (per-worker pairs of dicts), and meanwhile the single-process
    reference of ``configs`` here: (reference, [each worker's results])."""
    model_path, data_path = str(tmp_path / "m.keras"), str(tmp_path / "x.npz")
    model.save(model_path)
    np.savez(data_path, x=x)
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [ROOT] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])),
        TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    procs, outs = [], []
    for i in range(2):
        out = str(tmp_path / f"out{i}.npz")
        outs.append(out)
        env_i = dict(env, TF_CONFIG=json.dumps(
            {"cluster": cluster, "task": {"type": "worker", "index": i}}))
        procs.append(subprocess.Popen(
            [sys.executable, os.path.join(HERE, "multiworker_worker.py"), model_path,
             data_path, out, json.dumps(list(configs) + list(extra))],
            env=env_i, cwd=str(tmp_path), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True))
    logs = []
    try:
        ref = _reference(model, x, configs)
        for p in procs:
            so, se = p.communicate(timeout=timeout)
            logs.append((p.returncode, so, se))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for i, (rc, so, se) in enumerate(logs):
        assert rc == 0 and "WORKER DONE" in so, f"worker {i} failed:\n{se[-4000:]}"
    results = []
    for out in outs:
        with np.load(out) as d:
            results.append(dict(d))
    return ref, results


def _reference(model, x, configs) -> dict:
    res = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tfprec.TfprecWarning)
        for run, kw in enumerate(configs):
            res.update(multiworker_worker.flatten(tfprec.noise_gains(model, x, **kw), run))
    return res


def _compare(ref: dict, got: dict, configs, worker: int) -> None:
    assert int(got["num_replicas"]) == 2 and int(got["num_workers"]) == 2, worker
    for run, kw in enumerate(configs):
        rtol = TOL[kw.get("dtype", "float32")]
        keys = [k for k in ref if k.startswith(f"{run}/")]
        assert sorted(keys) == sorted(k for k in got if k.startswith(f"{run}/"))
        for k in keys:
            a, b = ref[k], got[k]
            assert a.shape == b.shape, (worker, k, a.shape, b.shape)
            if k.endswith(("num_examples", "num_ties", "class_index")):
                np.testing.assert_array_equal(b, a, err_msg=f"worker {worker} {k}")
            else:
                np.testing.assert_allclose(b, a, rtol=rtol, atol=0,
                                           err_msg=f"worker {worker} {k}")


# ------------------------------------------------------------- in-process
def test_shards_are_array_split_parts():
    """The in-graph shard of each replica is numpy.array_split's part, also
    for batches smaller than the replica count (empty parts)."""
    for n in (1, 2, 5, 8, 63):
        for reps in (1, 2, 3, 4):
            idx = np.arange(n)
            for rid, part in enumerate(np.array_split(idx, reps)):
                start, size = distributed.shard_range(n, rid, reps)
                np.testing.assert_array_equal(idx[int(start):int(start) + int(size)],
                                              part, err_msg=f"n={n} R={reps} r={rid}")


def test_one_replica_strategy_matches_plain_pass():
    """The compiled distributed step (gathers, reductions, fixed signature,
    per-class rows) on a one-device MirroredStrategy equals the plain pass,
    last batch smaller than the others."""
    m = _cnn()
    x = np.random.default_rng(0).normal(size=(21, 8, 8, 1)).astype("float32")
    s = tf.distribute.MirroredStrategy(["/cpu:0"])
    assert distributed.num_workers(s) == 1
    kw = dict(batch_size=8, dtype="float64", per_class=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tfprec.TfprecWarning)
        a = multiworker_worker.flatten(tfprec.noise_gains(m, x, **kw), 0)
        b = multiworker_worker.flatten(tfprec.noise_gains(m, x, strategy=s, **kw), 0)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-10, err_msg=k)


def test_parameter_server_strategy_is_refused():
    ps = tf.distribute.experimental.ParameterServerStrategy
    fake = ps.__new__(ps)       # never started: only its type is checked
    with pytest.raises(tfprec.InvalidDataError, match="ParameterServerStrategy"):
        distributed.make_step(fake, None, tf.TensorSpec([None, 2]))


def test_workers_that_disagree_are_named():
    """The step's check of every replica's (batch size, seed) against this
    worker's: equal rows pass, any other row raises naming the replica."""
    calls = np.array([[8, 0, 3], [8, 0, 3]])
    distributed._check_calls(calls, 8, np.array([0, 3], np.int32))
    for bad, what in (([8, 0, 4], "seed \\[0, 4\\]"), ([7, 0, 3], "batch of 7")):
        with pytest.raises(tfprec.InvalidDataError, match=f"replica 1 .*{what}"):
            distributed._check_calls(np.array([[8, 0, 3], bad]), 8, [0, 3])


# ------------------------------------------------------------- two workers
@pytest.mark.slow
def test_two_workers_mlp_matches_one_process(tmp_path):
    """Two worker processes on a small MLP, float64, uneven shards (batch
    50 of 203 examples: 25/25 then 2/1): every worker returns the gains,
    per-example rows, ties and ranges of the whole data.  Then workers
    called with different batch sizes both raise InvalidDataError."""
    m = _mlp()
    x = np.random.default_rng(1).normal(size=(203, 12)).astype("float32")
    configs = [dict(batch_size=50, dtype="float64", per_example=True)]
    bad = [[dict(configs[0], batch_size=50), dict(configs[0], batch_size=40)]]
    ref, got = _run_workers(tmp_path, m, x, configs, extra=bad)
    for i, g in enumerate(got):
        err = str(g.pop("1/error"))
        assert err.startswith("InvalidDataError") and "40 examples" in err \
            and "same x, batch_size" in err, (i, err)
        _compare(ref, g, configs, i)


@pytest.mark.slow
def test_two_workers_cnn_per_class_float32_and_top_k(tmp_path):
    """Conv/BN/max-pool CNN with a shared input tensor, 10 classes, 253
    examples in batches of 63 (last batch 1 example: one worker's shard is
    empty): exact per-class rows and shift tables (float64), float32, and
    the top-k estimator without sketch; and ties (classes 0 and 1 have
    equal logits everywhere, a tie wherever class 0 is the decision)."""
    m = _cnn()
    w, b = m.get_layer("out").get_weights()
    w[:, 1] = w[:, 0]
    b[0] = b[1] = b[0] + 0.3
    m.get_layer("out").set_weights([w, b])
    x = np.random.default_rng(2).normal(size=(253, 8, 8, 1)).astype("float32")
    configs = [dict(batch_size=63, dtype="float64", per_class=True),
               dict(batch_size=63, dtype="float32", per_example=True),
               dict(batch_size=64, dtype="float64", top_k=3)]
    ref, got = _run_workers(tmp_path, m, x, configs)
    for i, g in enumerate(got):
        _compare(ref, g, configs, i)
    assert ref["0/num_examples"] == 253 and 0 < ref["0/num_ties"] < 253
    # The pass is not trivially agreeing: per-example rows differ by example.
    assert np.ptp(ref["0/example_w"][:, 0]) > 0
