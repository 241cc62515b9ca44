"""Turn the user's sources into archive entries, the way tar and zip users expect.

A directory source contributes its contents; a file source its base name.
Directories (so empty ones survive), regular files, hard links (the second
and later names of one inode) and symbolic links that stay inside their
source tree become entries; links that leave it, FIFOs, sockets and devices
are skipped with a warning, and so are names holding control characters or a
backslash (decompress refuses them).
Nothing is ever followed.  Entries come sorted,
parents before children, so archives are deterministic.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable

FILE, DIRECTORY, SYMLINK, HARDLINK = "file", "dir", "symlink", "hardlink"


class SourceError(Exception):
    """A source cannot be archived as asked (missing, unreadable, clashing names)."""


@dataclass
class Entry:
    kind: str
    name: str              # relative POSIX path inside the archive (str, surrogate-escaped)
    source: Path | None    # where the bytes come from (regular files)
    mode: int              # permission bits
    mtime_ns: int
    size: int = 0
    target: str = ""       # symlink target, or the earlier name of a hard link


_CONTROL = frozenset(chr(code) for code in [*range(32), 127])


def has_control_characters(name: str) -> bool:
    """C0 control characters or DEL (newlines, terminal escapes): such names are skipped
    when archiving and refused when restoring."""
    return not _CONTROL.isdisjoint(name)


def link_stays_inside(name: str, target: str) -> bool:
    """Does a relative link at `name` pointing at `target` resolve inside the tree?"""
    if not target or target.startswith("/") or "\x00" in target:
        return False
    depth = len(PurePosixPath(name).parts) - 1
    for part in PurePosixPath(target).parts:
        depth += -1 if part == ".." else 0 if part == "." else 1
        if depth < 0:
            return False
    return True


def listed_name(path: str) -> str:
    """The archive name of a path given in a --files-from list: as given, normalised."""
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if path.startswith("/") or ".." in parts or not parts:
        raise SourceError(f"{path!r}: listed paths must be relative and stay below the current folder")
    return "/".join(parts)


def scan(sources: list[Path | tuple[Path, str]], warn: Callable[[str], None],
         exclude: frozenset[tuple[int, int]] = frozenset()) -> list[Entry]:
    """Entries for all sources; files whose (device, inode) is in `exclude` (the
    archive being written) are left out.

    A source is a path (a folder gives its contents, a file its base name) or
    a (path, name) pair that stores the source itself under `name`.
    """
    from .restore import EntryNames, UnsafeEntry  # restore.py imports this module

    entries: list[Entry] = []
    seen_inodes: dict[tuple[int, int], str] = {}
    names: set[str] = set()
    tree = EntryNames()  # the rules decompress restores by: sources that break them are refused here
    for source in sources:
        source, given_name = (Path(source[0]), source[1]) if isinstance(source, tuple) else (Path(source), None)
        if given_name is not None:
            given_name = listed_name(given_name)
        try:
            info = source.lstat()
        except FileNotFoundError:
            raise SourceError(f"{source}: no such file or directory") from None
        except OSError as error:
            raise SourceError(f"{source}: {error.strerror}") from None
        if stat.S_ISDIR(info.st_mode):
            inside = _walk_directory(source, warn)
            prefix = "" if given_name is None else given_name + "/"
            found = [(prefix + relative, relative, path, item) for relative, path, item in inside]
            if given_name is not None:
                found.insert(0, (given_name, None, source, info))
        else:
            found = [(given_name or source.name, None, source, info)]
        for name, relative, path, item in found:
            if (item.st_dev, item.st_ino) in exclude:
                continue
            if has_control_characters(name):
                warn(f"skipping {name!r}: its name holds control characters")
                continue
            if "\\" in name:  # decompress refuses such names (files.restore.checked_name)
                warn(f"skipping {name!r}: its name holds a backslash")
                continue
            if name in names:
                raise SourceError(f"two sources give the same archive path {name!r}")
            names.add(name)
            entry = _entry(name, relative, path, item, seen_inodes, warn)
            if entry is None:
                continue
            try:
                tree.claim(name, {DIRECTORY: "dir", SYMLINK: "symlink"}.get(entry.kind, "file"))
            except UnsafeEntry as error:  # a file where another source has a folder, or the reverse
                raise SourceError(f"the sources clash: {error}") from None
            entries.append(entry)
    return entries


def _walk_directory(root: Path, warn) -> list[tuple[str, Path, os.stat_result]]:
    found = []

    def fail(error: OSError) -> None:
        raise SourceError(f"{error.filename}: {error.strerror}")

    for directory, subdirectories, files in os.walk(root, onerror=fail):
        subdirectories.sort()
        base = Path(directory)
        for name in sorted(subdirectories) + sorted(files):
            path = base / name
            found.append((path.relative_to(root).as_posix(), path, path.lstat()))
    found.sort(key=lambda item: item[0].split("/"))
    return found


def _entry(name: str, relative: str | None, path: Path, info: os.stat_result, seen_inodes, warn) -> Entry | None:
    """`relative` is the path below the source folder (None for a source itself):
    a symbolic link must stay inside that folder."""
    mode, mtime = stat.S_IMODE(info.st_mode), info.st_mtime_ns
    if stat.S_ISDIR(info.st_mode):
        return Entry(DIRECTORY, name, None, mode, mtime)
    if stat.S_ISLNK(info.st_mode):
        target = os.readlink(path)
        if relative is None or not link_stays_inside(relative, target):
            warn(f"skipping symbolic link {name} -> {target} (it points outside the archived tree)")
            return None
        return Entry(SYMLINK, name, None, mode, mtime, target=target)
    if not stat.S_ISREG(info.st_mode):
        warn(f"skipping {name}: not a regular file, directory or link")
        return None
    if not os.access(path, os.R_OK):
        raise SourceError(f"{path}: permission denied")
    if info.st_nlink > 1:
        key = (info.st_dev, info.st_ino)
        if key in seen_inodes:
            return Entry(HARDLINK, name, None, mode, mtime, target=seen_inodes[key])
        seen_inodes[key] = name
    return Entry(FILE, name, path, mode, mtime, size=info.st_size)
