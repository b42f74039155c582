"""Tests of tfprec.data: embedded subset, data-folder loaders, errors.

The real datasets come from the shared data folder (conftest.shared_file:
skipped on a developer machine without it, a failure under CI)."""
import os

import numpy as np
import pytest

from conftest import shared_file
from tfprec.application import data as tdata
from tfprec.application.data import Dataset, load_dataset
from tfprec.errors import InvalidDataError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _no_env_data_dir(request, monkeypatch):
    """Every test starts without $TFPREC_DATA_DIR (the shared folder, when a
    test asks for it, is resolved first, with the environment as given)."""
    if "shared_data_dir" in request.fixturenames:
        request.getfixturevalue("shared_data_dir")
    monkeypatch.delenv(tdata.ENV_DATA_DIR, raising=False)


@pytest.fixture
def no_repository_data(monkeypatch):
    """No ../shared/data next to the repository: the online loaders are used."""
    monkeypatch.setattr(tdata, "repository_data_dir", lambda: None)


def _write(path, n_train=20, n_test=10, shape=(28, 28), dtype=np.uint8, **over):
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (n_train,) + shape).astype(dtype),
        "y_train": rng.integers(0, 10, n_train).astype(np.uint8),
        "x_test": rng.integers(0, 256, (n_test,) + shape).astype(dtype),
        "y_test": rng.integers(0, 10, n_test).astype(np.uint8),
    }
    arrays.update(over)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)
    return str(path)


# ------------------------------------------------------- embedded subset
def test_embedded_subset_file_is_small_and_present():
    p = tdata.embedded_subset_path()
    assert os.path.isfile(p)
    assert os.path.getsize(p) < 3_000_000


def test_embedded_subset_shapes_dtypes_ranges():
    ds = load_dataset("mnist_subset")
    assert isinstance(ds, Dataset)
    assert ds.name == "mnist_subset" and ds.num_classes == 10
    assert ds.x_train.shape == (8000, 28, 28, 1)
    assert ds.x_test.shape == (2000, 28, 28, 1)
    assert ds.input_shape == (28, 28, 1)
    assert ds.x_train.dtype == np.float32 and ds.x_test.dtype == np.float32
    assert ds.y_train.dtype == np.int64 and ds.y_test.dtype == np.int64
    for x in (ds.x_train, ds.x_test):
        assert x.min() == 0.0 and x.max() == 1.0
    # class-balanced selection of real digits
    assert np.bincount(ds.y_train).tolist() == [800] * 10
    assert np.bincount(ds.y_test).tolist() == [200] * 10
    assert 0.1 < float(ds.x_train.mean()) < 0.15  # MNIST mean pixel ~0.13
    assert "embedded" in ds.source


def test_embedded_subset_is_real_mnist(shared_data_dir):
    sub = np.load(tdata.embedded_subset_path())
    with np.load(os.path.join(shared_data_dir, "mnist.npz")) as full:
        np.testing.assert_array_equal(sub["x_train"], full["x_train"][sub["train_index"]])
        np.testing.assert_array_equal(sub["y_test"], full["y_test"][sub["test_index"]])


def test_layout_flags_and_subsetting():
    flat = load_dataset("mnist_subset", flatten=True, num_train=100, num_test=50)
    assert flat.x_train.shape == (100, 784) and flat.x_test.shape == (50, 784)
    plain = load_dataset("mnist_subset", channels=False, num_train=100, num_test=50)
    assert plain.x_train.shape == (100, 28, 28)
    full = load_dataset("mnist_subset")
    np.testing.assert_array_equal(flat.x_train, full.x_train[:100].reshape(100, -1))
    np.testing.assert_array_equal(plain.y_test, full.y_test[:50])


@pytest.mark.parametrize("kw", [{"num_train": 0}, {"num_train": 8001},
                                {"num_test": -1}, {"num_test": 2.5}])
def test_bad_subset_sizes(kw):
    with pytest.raises(InvalidDataError, match=list(kw)[0]):
        load_dataset("mnist_subset", **kw)


# ------------------------------------------------------- data folder
def test_mnist_from_shared_data_dir(shared_data_dir):
    ds = load_dataset("mnist", shared_data_dir, flatten=True)
    assert ds.x_train.shape == (60000, 784) and ds.x_test.shape == (10000, 784)
    assert ds.x_train.dtype == np.float32 and 0.0 <= ds.x_train.min() <= ds.x_train.max() <= 1.0
    assert ds.source == os.path.join(shared_data_dir, "mnist.npz")
    assert np.bincount(ds.y_test).sum() == 10000 and ds.num_classes == 10


def test_cifar10_from_shared_data_dir():
    shared = os.path.dirname(shared_file("cifar10_jpeg75.npz"))
    ds = load_dataset("cifar10", shared, num_train=500, num_test=200)
    assert ds.x_train.shape == (500, 32, 32, 3) and ds.x_test.shape == (200, 32, 32, 3)
    assert ds.x_train.dtype == np.float32 and ds.x_train.max() <= 1.0
    assert ds.y_train.shape == (500,) and ds.y_train.max() <= 9
    assert ds.source.endswith("cifar10_jpeg75.npz")


def test_cifar10_plain_file_name_and_label_column(tmp_path):
    _write(tmp_path / "cifar10.npz", shape=(32, 32, 3),
           y_train=np.arange(20).reshape(20, 1) % 10)  # keras-style [N, 1]
    ds = load_dataset("cifar10", data_dir=str(tmp_path))
    assert ds.x_train.shape == (20, 32, 32, 3) and ds.y_train.shape == (20,)
    assert ds.source == str(tmp_path / "cifar10.npz")


def test_env_var_data_dir(tmp_path, monkeypatch):
    p = _write(tmp_path / "mnist.npz")
    monkeypatch.setenv(tdata.ENV_DATA_DIR, str(tmp_path))
    ds = load_dataset("mnist")
    assert ds.source == p and ds.x_train.shape == (20, 28, 28, 1)


def test_env_var_shared_data_dir(shared_data_dir, monkeypatch):
    monkeypatch.setenv(tdata.ENV_DATA_DIR, shared_data_dir)
    ds = load_dataset("mnist", num_train=10, num_test=10)
    assert ds.source == os.path.join(shared_data_dir, "mnist.npz")


def test_data_dir_argument_beats_env(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    _write(a / "mnist.npz", n_train=5)
    _write(b / "mnist.npz", n_train=7)
    monkeypatch.setenv(tdata.ENV_DATA_DIR, str(b))
    assert load_dataset("mnist", data_dir=str(a)).num_train == 5
    assert load_dataset("mnist").num_train == 7


def test_data_dir_resolution_order(tmp_path, monkeypatch):
    """--data_dir beats $TFPREC_DATA_DIR beats ../shared/data next to the
    repository; with none of them the online loader is used."""
    folders = {}
    for n_train, name in enumerate(("flag", "env", "repo"), start=5):
        folders[name] = tmp_path / name
        folders[name].mkdir()
        _write(folders[name] / "mnist.npz", n_train=n_train)
    monkeypatch.setattr(tdata, "repository_data_dir", lambda: str(folders["repo"]))
    monkeypatch.setenv(tdata.ENV_DATA_DIR, str(folders["env"]))
    assert load_dataset("mnist", str(folders["flag"])).num_train == 5
    assert load_dataset("mnist").num_train == 6
    monkeypatch.setenv(tdata.ENV_DATA_DIR, "  ")         # blank: as if unset
    assert load_dataset("mnist").num_train == 7
    monkeypatch.delenv(tdata.ENV_DATA_DIR)
    ds = load_dataset("mnist")
    assert ds.num_train == 7 and ds.source == str(folders["repo"] / "mnist.npz")
    monkeypatch.setattr(tdata, "repository_data_dir", lambda: None)
    from tfprec._tf import keras
    fake = ((np.zeros((3, 28, 28), np.uint8), np.arange(3)),
            (np.zeros((2, 28, 28), np.uint8), np.arange(2)))
    monkeypatch.setattr(keras.datasets.mnist, "load_data", lambda: fake)
    ds = load_dataset("mnist")
    assert ds.num_train == 3 and "keras.datasets.mnist" in ds.source


def test_repository_data_dir_is_next_to_the_checkout():
    expected = os.path.join(os.path.dirname(REPO), "shared", "data")
    got = tdata.repository_data_dir()
    assert got == (expected if os.path.isdir(expected) else None)


def test_npz_path_and_float_inputs(tmp_path):
    x = np.random.default_rng(1).random((12, 6)).astype(np.float64)
    p = _write(tmp_path / "mine.npz", shape=(6,), x_train=x, x_test=x[:4],
               y_train=np.arange(12) % 3, y_test=np.arange(4) % 3)
    ds = load_dataset(p)
    assert ds.name == "mine" and ds.num_classes == 3
    np.testing.assert_allclose(ds.x_train, x.astype(np.float32))  # floats kept
    assert ds.x_train.dtype == np.float32


# ------------------------------------------------------- errors
def test_unknown_name():
    with pytest.raises(InvalidDataError, match="unknown dataset 'imagenet'"):
        load_dataset("imagenet")


def test_missing_file_in_data_dir(tmp_path):
    with pytest.raises(InvalidDataError, match="mnist.npz"):
        load_dataset("mnist", data_dir=str(tmp_path))
    with pytest.raises(InvalidDataError, match="cifar10_jpeg75.npz"):
        load_dataset("cifar10", data_dir=str(tmp_path))
    with pytest.raises(InvalidDataError, match="does not exist"):
        load_dataset("mnist", data_dir=str(tmp_path / "nope"))


def test_missing_env_file_names_env_var(tmp_path, monkeypatch):
    monkeypatch.setenv(tdata.ENV_DATA_DIR, str(tmp_path))
    with pytest.raises(InvalidDataError, match="TFPREC_DATA_DIR"):
        load_dataset("mnist")


def test_missing_npz_path(tmp_path):
    p = str(tmp_path / "absent.npz")
    with pytest.raises(InvalidDataError, match="absent.npz"):
        load_dataset(p)


def test_npz_lacking_key(tmp_path):
    p = _write(tmp_path / "nokey.npz", y_test=None)
    with pytest.raises(InvalidDataError, match=r"nokey\.npz.*y_test"):
        load_dataset(p)


def test_mismatched_lengths(tmp_path):
    p = _write(tmp_path / "short.npz", y_train=np.zeros(19, np.uint8))
    with pytest.raises(InvalidDataError, match=r"short\.npz.*x_train.*20.*y_train.*19"):
        load_dataset(p)


def test_non_finite_values(tmp_path):
    x = np.zeros((10, 4), np.float32)
    x[3, 2] = np.nan
    p = _write(tmp_path / "nan.npz", x_train=np.zeros((20, 4), np.float32), x_test=x)
    with pytest.raises(InvalidDataError, match=r"nan\.npz.*x_test.*non-finite"):
        load_dataset(p)


def test_bad_labels_and_garbage_file(tmp_path):
    p = _write(tmp_path / "neg.npz", y_test=-np.ones(10, np.int64))
    with pytest.raises(InvalidDataError, match="y_test"):
        load_dataset(p)
    g = tmp_path / "garbage.npz"
    g.write_bytes(b"not a zip file")
    with pytest.raises(InvalidDataError, match="garbage.npz"):
        load_dataset(str(g))


def test_offline_online_loader_failure(monkeypatch, no_repository_data):
    from tfprec._tf import keras

    def boom():
        raise OSError("Name or service not known")

    monkeypatch.setattr(keras.datasets.mnist, "load_data", boom)
    with pytest.raises(InvalidDataError, match=r"--data_dir.*TFPREC_DATA_DIR"):
        load_dataset("mnist")


def test_online_loader_used_without_data_dir(monkeypatch, no_repository_data):
    from tfprec._tf import keras
    rng = np.random.default_rng(0)
    fake = ((rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8),
             rng.integers(0, 10, (6, 1), dtype=np.uint8)),
            (rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8),
             rng.integers(0, 10, (4, 1), dtype=np.uint8)))
    monkeypatch.setattr(keras.datasets.cifar10, "load_data", lambda: fake)
    ds = load_dataset("cifar10")
    assert ds.x_train.shape == (6, 32, 32, 3) and ds.y_train.shape == (6,)
    assert "keras.datasets.cifar10" in ds.source
