"""Atomic file output: a file is written whole under a temporary name in its
own folder, then renamed into place, so a failure leaves nothing behind and
never a half-written file.  New files get the permissions the user's umask
gives (as ``open`` would), and an existing file keeps its mode.
"""
from __future__ import annotations

import os
import stat
import tempfile


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def nearest_existing_dir(path: str) -> str:
    """The nearest existing ancestor of ``path`` (``path`` itself if it
    exists); the filesystem root at worst.  What must be writable for
    ``path`` to be created."""
    anchor = os.path.abspath(path)
    while not os.path.exists(anchor):
        parent = os.path.dirname(anchor)
        if parent == anchor:
            break
        anchor = parent
    return anchor


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Writes ``data`` to ``path`` via a temp file in the same directory.

    OSError propagates unchanged; no partial file is left behind on failure.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        mode = 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(prefix=".tfprec-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def make_temp_dir(prefix: str, directory: str) -> str:
    """A new empty folder in ``directory`` (``tempfile.mkdtemp``) with the
    permissions the user's umask gives a new folder (``0o777 & ~umask``),
    not mkdtemp's 0700, so that a folder renamed into place looks like one
    ``os.makedirs`` made."""
    path = tempfile.mkdtemp(prefix=prefix, dir=directory)
    os.chmod(path, 0o777 & ~_umask())
    return path


def atomic_write_text(path: str, text: str) -> None:
    """:func:`atomic_write_bytes` of ``text`` in UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_with(path: str, write) -> None:
    """Atomically creates ``path`` with ``write(tmp_path)``, a writer that needs
    a file name (``model.save``, ``np.savez``); the temp name keeps the
    extension of ``path`` so the writer picks the same format."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    suffix = os.path.splitext(path)[1]
    fd, tmp = tempfile.mkstemp(prefix=".tfprec-", suffix=suffix, dir=directory)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
