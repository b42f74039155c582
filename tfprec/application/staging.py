"""The output folder of a ``tfprec`` run: checked first, staged, committed
all at once.

Rules for ``--output_dir`` (checked by :func:`check_output_dir` before
TensorFlow is imported, and again at the commit):

* a missing or empty folder is written;
* a folder that tfprec wrote (it holds the manifest ``.tfprec-run.json``
  listing that run's files, and nothing else) is *replaced*: the new run's
  files go in and the previous run's files that this run does not write are
  removed, so two runs never mix in one folder;
* any other non-empty folder is refused (exit status 2) unless
  ``--overwrite`` is given; then only the files with the names this run
  writes are replaced (and a previous tfprec run's files, when the manifest
  lists them, are removed); the user's other files are kept, and the
  manifest lists exactly what this run wrote.

:class:`Staging` writes every output into a hidden temporary folder
(``.tfprec-tmp-*``) next to the destination.  :meth:`Staging.commit` either
renames that folder into place (new destination) or moves the files one by
one, first moving every file it replaces into a backup folder; on any
failure it moves everything back, so the destination is exactly as before:
a failed run leaves nothing.  File writes go through :mod:`tfprec.fileio`
(the one atomic write of tfprec); folders get the permissions of the
user's umask.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from typing import Optional

from tfprec.errors import CliError
from tfprec.fileio import (atomic_write_text, atomic_write_with, make_temp_dir,
                           nearest_existing_dir)

MANIFEST = ".tfprec-run.json"
TEMP_PREFIX = ".tfprec-tmp-"
BACKUP_PREFIX = ".tfprec-old-"


def read_manifest(folder: str) -> Optional[dict]:
    """The manifest of a folder tfprec wrote (``{"files": [...], ...}``), or
    None when there is none or it is not one of tfprec's."""
    try:
        with open(os.path.join(folder, MANIFEST), encoding="utf-8") as f:
            m = json.load(f)
    except (OSError, ValueError):
        return None
    if (not isinstance(m, dict) or m.get("tool") != "tfprec"
            or not isinstance(m.get("files"), list)
            or not all(isinstance(n, str) and os.sep not in n and n not in ("", ".", "..")
                       for n in m["files"])):
        return None
    return m


@dataclasses.dataclass(frozen=True)
class OutputDir:
    """What ``--output_dir`` holds now.

    Attributes:
      final: its absolute path.
      exists: whether it exists (as a folder).
      previous: files of an earlier tfprec run (listed in its manifest) that
        are there.
      foreign: the other entries (not written by tfprec), sorted.
    """

    final: str
    exists: bool
    previous: tuple = ()
    foreign: tuple = ()

    @property
    def is_tfprec_run(self) -> bool:
        return self.exists and bool(self.previous) and not self.foreign


def inspect_output_dir(output_dir: str) -> OutputDir:
    """What ``output_dir`` holds (see :class:`OutputDir`)."""
    final = os.path.abspath(os.path.expanduser(output_dir))
    if not os.path.isdir(final):
        return OutputDir(final, False)
    names = set(os.listdir(final))
    manifest = read_manifest(final)
    listed = set(manifest["files"]) | {MANIFEST} if manifest else set()
    previous = tuple(sorted(n for n in names if n in listed))
    foreign = tuple(sorted(n for n in names if n not in listed))
    return OutputDir(final, True, previous, foreign)


def _anchor(final: str, output_dir: str) -> str:
    """The nearest existing ancestor of ``final``'s parent; CliError (exit
    status 2) when it, or ``final`` if it exists, is not a writable folder."""
    if os.path.lexists(final) and not os.path.isdir(final):
        raise CliError(f"--output_dir: {output_dir!r} exists and is not a folder", 2)
    anchor = nearest_existing_dir(os.path.dirname(final))
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise CliError(f"--output_dir: cannot write into {anchor!r} "
                       f"(needed for {output_dir!r})", 2)
    if os.path.isdir(final) and not os.access(final, os.W_OK | os.X_OK):
        raise CliError(f"--output_dir: folder {output_dir!r} is not writable", 2)
    return anchor


def _listing(names, limit: int = 6) -> str:
    names = list(names)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def check_output_dir(output_dir: str, overwrite: bool = False) -> OutputDir:
    """Checks the rules of the module docstring; CliError (exit status 2)
    naming ``--output_dir`` when the folder cannot or may not be written."""
    final = os.path.abspath(os.path.expanduser(output_dir))
    _anchor(final, output_dir)
    state = inspect_output_dir(output_dir)
    if state.foreign and not overwrite:
        what = ("holds files that tfprec did not write"
                if state.previous else "is not empty and was not written by tfprec")
        raise CliError(
            f"--output_dir: {output_dir!r} {what} ({_listing(state.foreign)}); pass "
            "--overwrite to write into it anyway (files with the names tfprec "
            "writes are replaced, the others are kept) or choose an empty or new "
            "folder", 2)
    return state


class Staging:
    """Writes the outputs into a temporary folder next to the destination.

    The temporary folder lives in the nearest existing ancestor of
    ``output_dir``'s parent, so the final moves are renames on one file
    system.  :meth:`commit` creates the missing parents and moves the files
    into ``output_dir`` all or nothing; :meth:`discard` removes everything.

    Attributes (after :meth:`commit`): ``replaced``, the names that existed
    in the destination and were replaced; ``removed``, the previous run's
    files that this run did not write and that were removed.
    """

    def __init__(self, output_dir: str, overwrite: bool = False, command: str = ""):
        self.output_dir = output_dir
        self.overwrite = bool(overwrite)
        self.command = command
        self.final = os.path.abspath(os.path.expanduser(output_dir))
        check_output_dir(output_dir, overwrite)
        self.anchor = _anchor(self.final, output_dir)
        self.dir = make_temp_dir(TEMP_PREFIX, self.anchor)
        self.replaced: list = []
        self.removed: list = []

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

    def staged(self) -> list:
        """The names staged so far (the manifest aside), sorted."""
        return sorted(n for n in os.listdir(self.dir) if n != MANIFEST)

    def _write_manifest(self, names: list) -> None:
        from tfprec import __version__
        self.write_text(MANIFEST, json.dumps({
            "tool": "tfprec", "version": __version__, "files": names,
            "command": self.command,
            "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=2) + "\n")

    def commit(self) -> list:
        """Moves the staged files into place, all or nothing; returns their
        final paths (the manifest aside).

        Raises CliError (exit status 2) when the destination gained files
        that tfprec did not write since the run started (and --overwrite
        was not given), or (exit status 1) when a move fails; the
        destination is then exactly as it was.
        """
        names = self.staged()
        state = check_output_dir(self.output_dir, self.overwrite)
        stale = [n for n in state.previous if n not in names and n != MANIFEST]
        try:
            self._write_manifest(names)
            if not state.exists:
                self._rename_into_place()
            else:
                self._move_files(names + [MANIFEST], stale)
        except OSError as e:
            raise CliError(f"--output_dir: could not move the outputs into "
                           f"{self.output_dir!r} ({e}); the folder was left as it "
                           "was", 1) from e
        self.discard()
        return [os.path.join(self.final, n) for n in names]

    def _rename_into_place(self) -> None:
        """A new destination: its missing parents, then one rename."""
        created = []
        parent = os.path.dirname(self.final)
        while not os.path.isdir(parent):
            created.append(parent)
            parent = os.path.dirname(parent)
        try:
            for d in reversed(created):
                os.mkdir(d)
            os.rename(self.dir, self.final)
        except BaseException:
            for d in created:               # innermost first
                try:
                    os.rmdir(d)
                except OSError:
                    pass
            raise
        self.dir = None

    def _move_files(self, names: list, stale: list) -> None:
        """An existing destination: every replaced or stale file goes to a
        backup folder, then the staged files move in; on failure everything
        moves back."""
        backup = make_temp_dir(BACKUP_PREFIX, self.final)
        moved_out, moved_in = [], []
        try:
            for n in names + stale:
                if os.path.lexists(self.final_path(n)):
                    os.replace(self.final_path(n), os.path.join(backup, n))
                    moved_out.append(n)
            for n in names:
                os.replace(self.path(n), self.final_path(n))
                moved_in.append(n)
        except BaseException:
            for n in reversed(moved_in):
                _quietly(os.replace, self.final_path(n), self.path(n))
            for n in reversed(moved_out):
                _quietly(os.replace, os.path.join(backup, n), self.final_path(n))
            shutil.rmtree(backup, ignore_errors=True)
            raise
        shutil.rmtree(backup, ignore_errors=True)
        self.replaced = sorted(n for n in moved_out if n in names and n != MANIFEST)
        self.removed = sorted(n for n in moved_out if n in stale)

    def discard(self) -> None:
        """Removes the staging folder and everything in it."""
        if self.dir and os.path.isdir(self.dir):
            shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None


def _quietly(fn, *args) -> None:
    try:
        fn(*args)
    except OSError:
        pass
