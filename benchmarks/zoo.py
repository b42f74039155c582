"""The forms of model users train, through the whole pipeline: a smoke run.

Each model is built (keras.applications with ``weights=None``), trained
one epoch on synthetic images (no download; the point is coverage, not
accuracy), then run through noise gains, a uniform 8-bit plan,
``quantize_model``, ``validate`` and ``export_tflite`` (default backend),
and the exported file through ``tflite_predict``.  Prints one line per
model: ``<name>_zoo: ok`` with the weight ops, the export backend, the
decisions the file and the fake-quant model agree on, and the seconds; or
the tfprec error (its type and message) or the crash, and the stage.

Forms (``--models``):

* ``transfer_mobilenetv2``: ``Sequential([frozen MobileNetV2 base, GAP,
  Dense])``, the transfer-learning form (a nested model);
* ``transfer_efficientnetb0``: the same with EfficientNetB0 and Dropout;
* ``tutorial_uint8``: uint8 images, a nested Sequential of random
  augmentations, Rescaling, Conv2D / pooling / Dense (the Keras tutorials');
* ``mixed_float16``: a small CNN under the mixed_float16 policy;
* ``xception``, ``inceptionv3``, ``resnet50v2``, ``efficientnetv2b0``,
  ``regnetx002``, ``convnexttiny`` (a nested stem, LayerScale; about 7 min):
  keras.applications classifiers (10 classes);
* not run by default: ``transfer_resnet50`` (the transfer form on a
  ResNet50 base), ``vgg16``, ``mobilenet``, ``mobilenetv3large`` (its own
  Rescaling), ``regnety002`` (squeeze-excite), ``resnetrs50``,
  ``densenet121``.

Usage:  python benchmarks/zoo.py [--models a,b,...] [--examples 192]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
import warnings

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "examples"))
import common  # noqa: E402,F401  (examples/common.py: imports tfprec first)

import numpy as np  # noqa: E402

import tfprec  # noqa: E402
from tfprec._tf import keras  # noqa: E402
from tfprec.export.aeq_report import AeqExportReport  # noqa: E402
from tfprec.export.running import tflite_predict  # noqa: E402

L = keras.layers
APPS = keras.applications


def _transfer(app, size=32, dropout=False):
    base = app(include_top=False, weights=None, input_shape=(size, size, 3))
    base.trainable = False
    head = [L.GlobalAveragePooling2D()] + ([L.Dropout(0.2)] if dropout else [])
    return keras.Sequential([base, *head, L.Dense(10, activation="softmax")])


def _tutorial():
    aug = keras.Sequential([L.RandomFlip("horizontal"), L.RandomRotation(0.1)], name="aug")
    i = keras.Input((32, 32, 3), dtype="uint8")
    h = L.Rescaling(1.0 / 255)(aug(i))
    h = L.MaxPooling2D()(L.Conv2D(8, 3, activation="relu")(h))
    h = L.MaxPooling2D()(L.Conv2D(16, 3, activation="relu")(h))
    h = L.Dense(32, activation="relu")(L.Flatten()(L.Dropout(0.2)(h)))
    return keras.Model(i, L.Dense(10)(h))


def _mixed():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        i = keras.Input((32, 32, 3))
        h = L.Conv2D(8, 3, activation="relu")(i)
        h = L.Dense(16, activation="relu")(L.Flatten()(L.MaxPooling2D()(h)))
        return keras.Model(i, L.Activation("softmax", dtype="float32")(L.Dense(10)(h)))
    finally:
        keras.mixed_precision.set_global_policy(None)


def _app(app, size=32, **kw):
    return lambda: app(weights=None, input_shape=(size, size, 3), classes=10, **kw)


#: name -> (builder, image size, integer input)
MODELS = {
    "transfer_mobilenetv2": (lambda: _transfer(APPS.MobileNetV2), 32, False),
    "transfer_efficientnetb0": (lambda: _transfer(APPS.EfficientNetB0, dropout=True), 32,
                                False),
    "tutorial_uint8": (_tutorial, 32, True),
    "mixed_float16": (_mixed, 32, False),
    "xception": (_app(APPS.Xception, 71), 71, False),
    "inceptionv3": (_app(APPS.InceptionV3, 75), 75, False),
    "resnet50v2": (_app(APPS.ResNet50V2), 32, False),
    "efficientnetv2b0": (_app(APPS.EfficientNetV2B0, include_preprocessing=False), 32,
                         False),
    "regnetx002": (_app(APPS.RegNetX002, include_preprocessing=False), 32, False),
    "convnexttiny": (_app(APPS.ConvNeXtTiny, include_preprocessing=False), 32, False),
    # more forms, not in the default run (about 8 min together)
    "transfer_resnet50": (lambda: _transfer(APPS.ResNet50), 32, False),
    "vgg16": (_app(APPS.VGG16), 32, False),
    "mobilenet": (_app(APPS.MobileNet), 32, False),
    "mobilenetv3large": (_app(APPS.MobileNetV3Large), 32, False),
    "regnety002": (_app(APPS.RegNetY002, include_preprocessing=False), 32, False),
    "resnetrs50": (_app(APPS.ResNetRS50, include_preprocessing=False), 32, False),
    "densenet121": (_app(APPS.DenseNet121), 32, False),
}
#: run by default: the forms up to regnetx002 (about 12 min)
DEFAULT_MODELS = ",".join(list(MODELS)[:list(MODELS).index("regnetx002") + 1])


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=DEFAULT_MODELS,
                    help=f"comma-separated, from {sorted(MODELS)}")
    ap.add_argument("--examples", type=int, default=192,
                    help="synthetic images: the first 128 train and calibrate, "
                         "the rest validate")
    return ap


def parse_args(argv=None) -> argparse.Namespace:
    ap = parser()
    a = ap.parse_args(argv)
    a.models = [m.strip() for m in a.models.split(",") if m.strip()]
    bad = [m for m in a.models if m not in MODELS]
    if bad or not a.models:
        ap.error(f"--models: unknown {bad} (choose from {sorted(MODELS)})")
    if a.examples < 129:
        ap.error(f"--examples={a.examples}: needs more than 128 (128 calibrate)")
    return a


def run_one(name: str, n: int, folder: str) -> str:
    build, size, integer = MODELS[name]
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, size, size, 3)).astype("uint8")
    x = x if integer else (x / 127.5 - 1.0).astype("float32")
    y = rng.integers(0, 10, n)
    t0, stage = time.time(), "build"
    try:
        keras.utils.set_random_seed(0)
        model = build()
        stage = "fit"
        soft = "softmax" in str(model.layers[-1].get_config().get("activation"))
        model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=not soft))
        model.fit(x[:128], y[:128], epochs=1, batch_size=32, verbose=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", tfprec.TfprecWarning)
            stage = "gains"
            g = tfprec.noise_gains(model, x[:128])
            stage = "plan"
            plan = tfprec.uniform_plan(g, bits=8)
            stage = "quantize"
            q = tfprec.quantize_model(model, plan)
            stage = "validate"
            tfprec.validate.validate(model, plan, x[128:], y[128:])
            stage = "export"
            path = os.path.join(folder, name + ".tflite")
            rep = tfprec.export.export_tflite(model, plan, path, x[:64])
            got = np.argmax(tflite_predict(path, x[128:]), -1)
        want = np.argmax(q.predict(x[128:], verbose=0), -1)
        backend = "ai_edge_quantizer" if isinstance(rep, AeqExportReport) else "exact"
        return (f"{name}_zoo: ok, {len(plan.layers)} weight ops, export {backend} "
                f"{os.path.getsize(path):,} B, file vs fake-quant decisions "
                f"{100 * np.mean(got == want):.1f} %, {time.time() - t0:.0f} s")
    except tfprec.TfprecError as e:
        return f"{name}_zoo: {type(e).__name__} at {stage}: {e}"
    except Exception as e:  # noqa: BLE001 - a smoke run reports every failure
        traceback.print_exc(limit=6)
        return f"{name}_zoo: CRASH at {stage}: {type(e).__name__}: {e}"


def main(argv=None) -> int:
    a = parse_args(argv)
    failed = 0
    with tempfile.TemporaryDirectory() as folder:
        for name in a.models:
            line = run_one(name, a.examples, folder)
            failed += ": ok," not in line
            print(line, flush=True)
    print(f"zoo_ok: {len(a.models) - failed} of {len(a.models)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
