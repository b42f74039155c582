"""One worker of the MultiWorkerMirroredStrategy tests (tests/test_multiworker.py).

Run as ``python tests/multiworker_worker.py MODEL.keras DATA.npz OUT.npz CONFIGS``
with ``TF_CONFIG`` set by the parent (cluster of worker addresses, this
worker's task index).  It creates the strategy first (collective ops must be
configured before TensorFlow runs anything), loads the model and the
calibration inputs ``x`` (every worker the same full data), then for each
run of ``CONFIGS`` (a JSON list; each item a dict of
:func:`tfprec.noise_gains` keyword arguments, or a list of one such dict per
worker) computes the gains under the strategy and saves them, under keys
``<run>/<field>`` (:func:`flatten`; ``<run>/error`` the message of a
:class:`tfprec.TfprecError` instead), to ``OUT.npz`` (written to a temporary
name, then renamed).
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np

import tfprec
from tfprec._tf import keras, tf
from tfprec.statistics import distributed

LAYER_FIELDS = ("e_w", "e_a", "r_w", "r_a", "act_low", "act_high")
ARRAY_FIELDS = ("example_w", "example_a", "class_w", "class_a", "class_margin",
                "class_index", "class_shift", "class_act_shift", "input_noise")


def flatten(g, run: int) -> dict:
    """The fields of NoiseGains ``g`` the tests compare, as numpy arrays
    under ``"<run>/<field>"``: per-layer fields [L], counts, and the
    per-example / per-class arrays that are set."""
    out = {f"{run}/{f}": np.array([getattr(lg, f) for lg in g.layers], np.float64)
           for f in LAYER_FIELDS}
    out[f"{run}/num_examples"] = np.array(g.num_examples)
    out[f"{run}/num_ties"] = np.array(g.num_ties)
    for f in ARRAY_FIELDS:
        v = getattr(g, f)
        if v is not None:
            out[f"{run}/{f}"] = np.asarray(v)
    return out


def main(argv) -> int:
    model_path, data_path, out_path, configs = argv[1:5]
    strategy = tf.distribute.MultiWorkerMirroredStrategy(
        communication_options=tf.distribute.experimental.CommunicationOptions(
            timeout_seconds=120))
    model = keras.models.load_model(model_path, compile=False)
    with np.load(data_path) as d:
        x = d["x"]
    index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    res = {"num_replicas": np.array(strategy.num_replicas_in_sync),
           "num_workers": np.array(distributed.num_workers(strategy))}
    for run, kw in enumerate(json.loads(configs)):
        kw = kw[index] if isinstance(kw, list) else kw
        try:
            res.update(flatten(tfprec.noise_gains(model, x, strategy=strategy, **kw),
                               run))
        except tfprec.TfprecError as e:
            res[f"{run}/error"] = np.array(f"{type(e).__name__}: {e}")
    tmp = out_path + ".tmp.npz"
    np.savez(tmp, **res)
    os.replace(tmp, out_path)
    print("WORKER DONE", index)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
