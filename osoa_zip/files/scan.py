"""Turn the user's sources into archive entries, the way tar and zip users expect.

A directory source contributes its contents; a file source its base name.
Directories (so empty ones survive), regular files, hard links (the second
and later names of one inode) and symbolic links that stay inside their
source tree become entries; links that leave it, FIFOs, sockets and devices
are skipped with a warning, and so are names holding control characters or a
backslash (decompress refuses them).
Nothing is ever followed.  Entries come sorted,
parents before children, so archives are deterministic.  --exclude patterns
leave entries out by their archive names, with GNU tar's rules
(ExcludePatterns).
"""
from __future__ import annotations

import fnmatch
import os
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable

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


class ExcludePatterns:
    """tar --exclude's matching (GNU tar's defaults: wildcards, unanchored, '*' and '?'
    matching '/' too, a match on leading folders counting): a name is excluded when
    the pattern matches any run of its consecutive components, so a pattern without
    '/' matches a name at any depth and an excluded folder takes everything below it.
    Patterns are shell wildcards (fnmatch: *, ?, [...]), matched case-sensitively
    against archive names; a pattern ending in '/' matches nothing, as in tar."""

    def __init__(self, patterns: Iterable[str] = ()) -> None:
        self.patterns = tuple(patterns)

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def excludes(self, name: str) -> bool:
        parts = name.split("/")
        runs = ["/".join(parts[start:end]) for start in range(len(parts)) for end in range(start + 1, len(parts) + 1)]
        return any(fnmatch.fnmatchcase(run, pattern) for pattern in self.patterns for run in runs)


NO_EXCLUDES = ExcludePatterns()


def scan(sources: list[Path | tuple[Path, str]], warn: Callable[[str], None],
         exclude: frozenset[tuple[int, int]] = frozenset(),
         patterns: ExcludePatterns = NO_EXCLUDES) -> list[Entry]:
    """Entries for all sources; files whose (device, inode) is in `exclude` (the
    archive being written) and names that `patterns` exclude are left out (an
    excluded folder is not even read).

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
        if given_name is not None and patterns.excludes(given_name):
            continue
        if stat.S_ISDIR(info.st_mode):
            prefix = "" if given_name is None else given_name + "/"
            inside = _walk_directory(source, lambda relative, prefix=prefix: patterns.excludes(prefix + relative))
            found = [(prefix + relative, relative, path, item) for relative, path, item in inside]
            if given_name is not None:
                found.insert(0, (given_name, None, source, info))
        elif patterns.excludes(given_name or source.name):
            continue
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


def _walk_directory(root: Path, excluded: Callable[[str], bool]) -> list[tuple[str, Path, os.stat_result]]:
    """(path below root, path, lstat) of everything below root, except excluded names
    and whatever is below an excluded folder (which is never entered)."""
    found = []

    def fail(error: OSError) -> None:
        raise SourceError(f"{error.filename}: {error.strerror}")

    for directory, subdirectories, files in os.walk(root, onerror=fail):
        base = Path(directory)
        relative_base = base.relative_to(root).as_posix()
        relative = {name: name if relative_base == "." else f"{relative_base}/{name}"
                    for name in subdirectories + files}
        subdirectories[:] = sorted(name for name in subdirectories if not excluded(relative[name]))
        for name in subdirectories + sorted(name for name in files if not excluded(relative[name])):
            path = base / name
            found.append((relative[name], path, path.lstat()))
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
