"""Datasets for tfprec's demos, tests and benchmarks.

:func:`load_dataset` returns a :class:`Dataset` (numpy arrays, float32 inputs
scaled to [0, 1], integer labels) for

* ``'mnist'`` and ``'cifar10'``: read from ``mnist.npz`` /
  ``cifar10_jpeg75.npz`` (or ``cifar10.npz``) in a data folder, given by the
  ``data_dir`` argument, else the ``TFPREC_DATA_DIR`` environment variable,
  else ``../shared/data`` relative to the repository (when it exists);
  with none of them, Keras' online loaders ``keras.datasets.mnist.load_data()`` /
  ``keras.datasets.cifar10.load_data()`` are used (they download once into
  ``~/.keras/datasets``);
* ``'mnist_subset'``: a class-balanced MNIST subset embedded in the package
  (8000 training and 2000 test images, ``tfprec/application/assets/mnist_subset.npz``, made
  by ``benchmarks/make_mnist_subset.py``), so demos and tests run offline;
* a path to any ``.npz`` file holding ``x_train``, ``y_train``, ``x_test``,
  ``y_test``.

Every problem raises :class:`tfprec.errors.InvalidDataError` naming the file
(or dataset name) and, where it applies, the array key.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Optional

import numpy as np

from tfprec.errors import InvalidDataError

ENV_DATA_DIR = "TFPREC_DATA_DIR"
KEYS = ("x_train", "y_train", "x_test", "y_test")
NAMES = ("mnist", "cifar10", "mnist_subset")

# File names looked up in a data folder, in order.
_FILES = {
    "mnist": ("mnist.npz",),
    "cifar10": ("cifar10_jpeg75.npz", "cifar10.npz"),
}
_NUM_CLASSES = {"mnist": 10, "cifar10": 10, "mnist_subset": 10}
_SUBSET_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets",
                            "mnist_subset.npz")


@dataclasses.dataclass
class Dataset:
    """A train/test split held in memory.

    Attributes:
      x_train, x_test: float32 inputs, [N, ...]; image data scaled to [0, 1].
      y_train, y_test: int64 class labels, [N].
      num_classes: number of classes M.
      name: dataset name (``'mnist'``, ``'cifar10'``, ``'mnist_subset'`` or
        the file's stem for a user .npz).
      source: where the arrays came from (a file path or the online loader).
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    name: str
    source: str

    @property
    def input_shape(self) -> tuple:
        """Per-example input shape (no batch dimension)."""
        return tuple(self.x_train.shape[1:])

    @property
    def num_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def num_test(self) -> int:
        return int(self.x_test.shape[0])

    def __repr__(self) -> str:
        return (f"Dataset(name={self.name!r}, train={self.x_train.shape}, "
                f"test={self.x_test.shape}, num_classes={self.num_classes}, "
                f"source={self.source!r})")


def embedded_subset_path() -> str:
    """Path of the MNIST subset shipped inside the package."""
    try:  # importlib.resources works from zips and odd installs too
        from importlib import resources
        p = resources.files("tfprec.application").joinpath("assets", "mnist_subset.npz")
        if p.is_file():
            return os.fspath(p)
    except Exception:  # pragma: no cover - fall back to the module's folder
        pass
    return _SUBSET_FILE


def repository_data_dir() -> Optional[str]:
    """``../shared/data`` next to the repository tfprec runs from (a source
    checkout or an editable install), if that folder exists; else None."""
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    d = os.path.join(os.path.dirname(repo), "shared", "data")
    return d if os.path.isdir(d) else None


def resolve_data_dir(data_dir: Optional[str] = None) -> Optional[str]:
    """The offline data folder: ``data_dir`` if given, else
    ``$TFPREC_DATA_DIR`` if set, else ``../shared/data`` relative to the
    repository if it exists, else None (the online loaders are used)."""
    if data_dir:
        return os.fspath(data_dir)
    env = os.environ.get(ENV_DATA_DIR, "").strip()
    return env or repository_data_dir()


def load_dataset(name: str, data_dir: Optional[str] = None, *,
                 num_train: Optional[int] = None, num_test: Optional[int] = None,
                 flatten: bool = False, channels: bool = True,
                 scale_integers: bool = True) -> Dataset:
    """Loads a dataset as float32 inputs in [0, 1] and integer labels.

    Args:
      name: ``'mnist'``, ``'cifar10'``, ``'mnist_subset'`` (embedded, always
        available offline) or a path to an ``.npz`` file holding ``x_train``,
        ``y_train``, ``x_test`` and ``y_test``.
      data_dir: folder holding ``mnist.npz`` / ``cifar10_jpeg75.npz`` (or
        ``cifar10.npz``).  Defaults to ``$TFPREC_DATA_DIR``, then
        ``../shared/data`` relative to the repository; with none, the Keras
        online loaders are used.  Ignored for ``'mnist_subset'`` and
        .npz paths.
      num_train, num_test: keep only the first N examples of each split
        (deterministic); None keeps all.
      flatten: reshape inputs to [N, prod(shape)] (e.g. [N, 784] for an MLP).
      channels: give single-channel images [N, H, W] a channel axis,
        [N, H, W, 1] (what Conv2D needs).  Ignored when ``flatten``.

    Integer inputs (uint8 images) are divided by 255 (``scale_integers``
    False: kept as their integer values 0..255, in float32, for a model whose
    input is uint8 and that scales them itself, e.g. with a Rescaling layer);
    float inputs are kept as they are (assumed already scaled).

    Raises:
      InvalidDataError: unknown name, missing file, missing key, mismatched
        lengths, non-finite values, bad labels, bad num_train / num_test, or
        the online loader failed (e.g. no network).
    """
    if not isinstance(name, (str, os.PathLike)):
        raise InvalidDataError(f"dataset name must be a string or path, got {name!r}")
    name_s = os.fspath(name)
    key = name_s.lower()
    if key == "mnist_subset":
        path = embedded_subset_path()
        if not os.path.isfile(path):
            raise InvalidDataError(
                f"the embedded dataset file {path} is missing from the tfprec "
                "installation; reinstall tfprec or rebuild it with "
                "benchmarks/make_mnist_subset.py")
        arrays = _read_npz(path)
        source = (f"embedded {path} (class-balanced MNIST subset: "
                  f"{len(arrays['y_train'])} train / {len(arrays['y_test'])} test)")
        ds_name, m, where = "mnist_subset", 10, path
    elif key in _FILES:
        d = resolve_data_dir(data_dir)
        if d is not None:
            path = _find_file(key, d, from_env=not data_dir and bool(
                os.environ.get(ENV_DATA_DIR, "").strip()))
            arrays = _read_npz(path)
            source = where = path
        else:
            arrays = _online(key)
            source = f"keras.datasets.{key}.load_data() (online download / ~/.keras cache)"
            where = f"keras.datasets.{key}"
        ds_name, m = key, _NUM_CLASSES[key]
    elif name_s.endswith(".npz") or os.path.sep in name_s or os.path.isfile(name_s):
        if not os.path.isfile(name_s):
            raise InvalidDataError(f"dataset file {name_s!r} does not exist")
        arrays = _read_npz(name_s)
        source = where = os.path.abspath(name_s)
        ds_name, m = os.path.splitext(os.path.basename(name_s))[0], None
    else:
        raise InvalidDataError(
            f"unknown dataset {name_s!r}: use one of {', '.join(NAMES)} or a "
            "path to an .npz file with x_train, y_train, x_test, y_test")
    return _build(arrays, ds_name, source, where, m, num_train, num_test,
                  flatten, channels, scale_integers)


# --------------------------------------------------------------- internals
def _find_file(key: str, data_dir: str, from_env: bool) -> str:
    where = f"{ENV_DATA_DIR}={data_dir}" if from_env else f"data_dir={data_dir}"
    if not os.path.isdir(data_dir):
        raise InvalidDataError(f"data folder {data_dir!r} ({where}) does not exist")
    for fname in _FILES[key]:
        p = os.path.join(data_dir, fname)
        if os.path.isfile(p):
            return p
    tried = " or ".join(os.path.join(data_dir, f) for f in _FILES[key])
    raise InvalidDataError(
        f"{key}: file {tried} not found ({where}); put the dataset there or "
        f"unset the data folder to download it with keras.datasets.{key}")


def _read_npz(path: str) -> dict:
    try:
        with np.load(path, allow_pickle=False) as d:
            missing = [k for k in KEYS if k not in d.files]
            if missing:
                raise InvalidDataError(
                    f"{path}: missing key(s) {', '.join(missing)} (has "
                    f"{', '.join(d.files) or 'no arrays'}; needs {', '.join(KEYS)})")
            return {k: d[k] for k in KEYS}
    except InvalidDataError:
        raise
    except Exception as e:  # bad zip, pickled objects, truncated file, ...
        raise InvalidDataError(f"{path}: cannot read as an .npz file ({e})") from e


def _online(key: str) -> dict:
    from tfprec._tf import keras
    loader = getattr(keras.datasets, key).load_data
    try:
        (xtr, ytr), (xte, yte) = loader()
    except Exception as e:
        raise InvalidDataError(
            f"could not load {key!r} with keras.datasets.{key}.load_data() "
            f"({type(e).__name__}: {e}); when offline, pass --data_dir or set "
            f"{ENV_DATA_DIR} to a folder holding {' or '.join(_FILES[key])}") from e
    return {"x_train": xtr, "y_train": ytr, "x_test": xte, "y_test": yte}


def _subset_count(n: Optional[int], avail: int, what: str, where: str) -> int:
    if n is None:
        return avail
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise InvalidDataError(f"{where}: {what} must be a positive integer, got {n!r}")
    if n > avail:
        raise InvalidDataError(
            f"{where}: {what}={n} exceeds the {avail} examples available")
    return int(n)


def _labels(y: np.ndarray, k: str, where: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise InvalidDataError(
            f"{where}: {k} must hold one integer label per example, got shape {y.shape}")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)):
            raise InvalidDataError(f"{where}: {k} has non-finite values")
        if not np.all(y == np.round(y)):
            raise InvalidDataError(f"{where}: {k} has non-integer labels")
    elif y.dtype.kind not in "iu":
        raise InvalidDataError(f"{where}: {k} has dtype {y.dtype}; labels must be integers")
    if y.size and y.min() < 0:
        raise InvalidDataError(f"{where}: {k} has negative labels (min {y.min()})")
    return y.astype(np.int64)


def _inputs(x: np.ndarray, k: str, where: str, scale: bool = True) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim < 2:
        raise InvalidDataError(
            f"{where}: {k} must have shape [N, ...] with N examples, got {x.shape}")
    if x.dtype.kind in "iu":
        if x.size and (x.min() < 0 or x.max() > 255):
            raise InvalidDataError(
                f"{where}: {k} holds integers outside [0, 255]; store images "
                "as uint8 or as floats already scaled")
        return x.astype(np.float32) / np.float32(255.0 if scale else 1.0)
    if x.dtype.kind == "f":
        x = x.astype(np.float32)
        if not np.all(np.isfinite(x)):
            raise InvalidDataError(f"{where}: {k} has non-finite values (NaN or inf)")
        return x
    if x.dtype.kind == "b":
        return x.astype(np.float32)
    raise InvalidDataError(f"{where}: {k} has unsupported dtype {x.dtype}")


def _build(arrays: dict, name: str, source: str, where: str,
           num_classes: Optional[int], num_train, num_test, flatten: bool,
           channels: bool, scale_integers: bool = True) -> Dataset:
    out = {}
    for split, n_req, what in (("train", num_train, "num_train"),
                               ("test", num_test, "num_test")):
        xk, yk = f"x_{split}", f"y_{split}"
        x, y = np.asarray(arrays[xk]), np.asarray(arrays[yk])
        if x.ndim < 1 or y.ndim < 1 or len(x) != len(y):
            raise InvalidDataError(
                f"{where}: {xk} has {len(x) if x.ndim else 0} examples but "
                f"{yk} has {len(y) if y.ndim else 0}")
        if len(x) == 0:
            raise InvalidDataError(f"{where}: {xk} is empty")
        n = _subset_count(n_req, len(x), what, where)
        x, y = x[:n], y[:n]
        x = _inputs(x, xk, where, scale_integers)
        y = _labels(y, yk, where)
        if flatten:
            x = x.reshape(len(x), -1)
        elif channels and x.ndim == 3:
            x = x[..., None]
        out[xk], out[yk] = x, y
    if out["x_train"].shape[1:] != out["x_test"].shape[1:]:
        raise InvalidDataError(
            f"{where}: x_train examples have shape {out['x_train'].shape[1:]} "
            f"but x_test examples {out['x_test'].shape[1:]}")
    top = int(max(out["y_train"].max(), out["y_test"].max())) + 1
    if num_classes is None:
        num_classes = top
        if num_classes < 2:
            raise InvalidDataError(f"{where}: labels hold fewer than 2 classes")
    elif top > num_classes:
        raise InvalidDataError(
            f"{where}: label {top - 1} out of range for {num_classes} classes")
    return Dataset(out["x_train"], out["y_train"], out["x_test"], out["y_test"],
                   int(num_classes), name, source)
