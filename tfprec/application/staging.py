"""The output folder of a ``tfprec`` run, staged.

:class:`Staging` writes every output into a hidden temporary folder next to
the destination and moves the files into place only at the end, so a
failed run leaves nothing behind.  File writes go through
:mod:`tfprec.fileio` (the one atomic write of tfprec).
"""
from __future__ import annotations

import os
import shutil
import tempfile

from tfprec.application.flags import CliError
from tfprec.fileio import atomic_write_text, atomic_write_with


def _writable_anchor(final: str, output_dir: str) -> str:
    """The nearest existing ancestor of ``final``'s parent; CliError when it
    (or ``final`` itself, if it exists) is not writable."""
    if os.path.exists(final) and not os.path.isdir(final):
        raise CliError(f"--output_dir: {output_dir!r} exists and is not a folder")
    anchor = os.path.dirname(final)
    while not os.path.isdir(anchor):
        parent = os.path.dirname(anchor)
        if parent == anchor:
            break
        anchor = parent
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise CliError(f"--output_dir: cannot write into {anchor!r} "
                       f"(needed for {output_dir!r})")
    if os.path.isdir(final) and not os.access(final, os.W_OK | os.X_OK):
        raise CliError(f"--output_dir: folder {output_dir!r} is not writable")
    return anchor


class Staging:
    """Writes the outputs into a temporary folder next to the destination.

    The temporary folder lives in the nearest existing ancestor of
    ``output_dir``'s parent, so the final moves are renames on one file
    system.  :meth:`commit` creates the missing parents and moves the files
    into ``output_dir`` (the folder itself is renamed into place when it
    does not exist yet); :meth:`discard` removes everything.
    """

    def __init__(self, output_dir: str):
        self.final = os.path.abspath(os.path.expanduser(output_dir))
        anchor = _writable_anchor(self.final, output_dir)
        self.dir = tempfile.mkdtemp(prefix=".tfprec-tmp-", dir=anchor)

    def path(self, name: str) -> str:
        """Where ``name`` is staged."""
        return os.path.join(self.dir, name)

    def final_path(self, name: str) -> str:
        """Where ``name`` ends up after :meth:`commit`."""
        return os.path.join(self.final, name)

    def write_text(self, name: str, text: str) -> str:
        """Stages ``name`` holding ``text`` (UTF-8); returns its staged path."""
        atomic_write_text(self.path(name), text)
        return self.path(name)

    def write_with(self, name: str, writer) -> str:
        """Stages ``name`` written by ``writer(path)`` (e.g. ``model.save``)."""
        atomic_write_with(self.path(name), writer)
        return self.path(name)

    def earlier(self, names) -> list:
        """Those of ``names`` that an earlier run left in the destination and
        that this run did not stage (they stay there after :meth:`commit`)."""
        if not os.path.isdir(self.final):
            return []
        produced = set(os.listdir(self.dir))
        return [n for n in names
                if n not in produced and os.path.exists(self.final_path(n))]

    def commit(self) -> list:
        """Moves the staged files into place; returns their final paths."""
        names = sorted(os.listdir(self.dir))
        os.makedirs(os.path.dirname(self.final), exist_ok=True)
        if not os.path.exists(self.final):
            os.rename(self.dir, self.final)
            self.dir = None
        else:
            for n in names:
                os.replace(os.path.join(self.dir, n), os.path.join(self.final, n))
            self.discard()
        return [os.path.join(self.final, n) for n in names]

    def discard(self) -> None:
        """Removes the staging folder and everything in it."""
        if self.dir and os.path.isdir(self.dir):
            shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None
