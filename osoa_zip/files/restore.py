"""Write entries into a private staging folder, then move them into place.

Why staging: the archive is verified only when its END chunk has been read,
so nothing may appear in the destination before that.  A destination that
does not exist yet is staged beside it, in `.NAME.osoa-zip-XXXXXXXX.part`,
and renamed into place in one step: even a killed process never leaves a
restored folder that looks complete, only that recognisable temporary one.
Into an existing folder, entries are staged in `DEST/.osoa-zip-XXXXXXXX`
and moved in at the end, one rename each.  Every name is checked
(no absolute paths, no '..', no NUL, no backslash), links are checked to stay
inside the tree, and the final move never follows a link that already exists
in the destination.  Directory modes and times are applied last, deepest
first, so a read-only directory can still be filled.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import Callable

from ..container.format import ArchiveError
from .scan import has_control_characters, link_stays_inside


class UnsafeEntry(Exception):
    """An archive entry would write outside the destination or clash with another."""


class RefusedEntries(ArchiveError):
    """Some entries were refused, each for a reason that names it; everything else
    was restored (or, for `test`, verified).  `reasons` holds one line per entry."""

    def __init__(self, reasons: list[str], summary=None) -> None:
        self.reasons = list(reasons)
        self.summary = summary
        more = f" (and {len(self.reasons) - 1} more refused entries)" if len(self.reasons) > 1 else ""
        super().__init__(self.reasons[0] + more)


class Conflict(Exception):
    """A restored file would overwrite an existing one (and --force was not given)."""


MAX_LINK_HOPS = 40  # as the kernel's ELOOP limit


def checked_name(name: str) -> PurePosixPath:
    if (not name or "\\" in name or name.startswith("/") or has_control_characters(name)
            or any(part in ("", ".", "..") for part in name.split("/"))):
        raise UnsafeEntry(f"refusing unsafe path {name!r}")
    return PurePosixPath(name)


class EntryNames:
    """The rules every restored name and link obeys, shared by decompress and `test`
    so that `test` passes exactly the archives that decompress would restore."""

    def __init__(self) -> None:
        self.kinds: dict[str, str] = {}
        self.links: dict[str, str] = {}  # symbolic links claimed so far: name -> target
        self._folders: set[str] = set()  # folders that claimed names imply

    def claim(self, name: str, kind: str) -> PurePosixPath:
        path = checked_name(name)
        if name in self.kinds:
            raise UnsafeEntry(f"duplicate path {name!r} in archive")
        if kind != "dir" and name in self._folders:
            raise UnsafeEntry(f"path {name!r} is already a folder of earlier entries")
        parts = name.split("/")
        folders = ["/".join(parts[:depth]) for depth in range(1, len(parts))]
        for above in folders:
            if self.kinds.get(above, "dir") != "dir":
                raise UnsafeEntry(f"path {name!r} goes through the {self.kinds[above]} {above!r}")
        self._folders.update(folders)
        self.kinds[name] = kind
        return path

    def check_symlink(self, name: str, target: str) -> None:
        """Lexically inside, and inside once the links restored so far are followed."""
        if not link_stays_inside(name, target) or not self._resolves_inside(name, target):
            raise UnsafeEntry(f"refusing link {name!r} -> {target!r}: it leaves the destination")

    def claim_symlink(self, name: str, target: str) -> PurePosixPath:
        self.check_symlink(name, target)
        path = self.claim(name, "symlink")
        self.links[name] = target
        return path

    def _resolves_inside(self, name: str, target: str) -> bool:
        """Follow `target` from `name`'s folder through the links of this archive, as the
        kernel would: `m -> .` and then `x -> m/..` is lexically inside but leaves DEST."""
        current = name.split("/")[:-1]
        pending = target.split("/")
        hops = 0
        while pending:
            part = pending.pop(0)
            if part in ("", "."):
                continue
            if part == "..":
                if not current:
                    return False
                current.pop()
                continue
            current.append(part)
            link = self.links.get("/".join(current))
            if link is not None:
                hops += 1
                if hops > MAX_LINK_HOPS or link.startswith("/"):
                    return False
                current.pop()
                pending = link.split("/") + pending
        return True

    def links_leaving(self) -> list[str]:
        """Links that leave DEST once all links are known (a later link can change where an
        earlier one leads); call after the last entry."""
        return [name for name, target in self.links.items() if not self._resolves_inside(name, target)]

    def check_hardlink(self, name: str, target: str) -> None:
        if self.kinds.get(target) != "file":
            raise UnsafeEntry(f"hard link {name!r} names {target!r}, which is not an earlier file")


def _everything(name: str) -> bool:
    return True


class Staging:
    def __init__(self, destination: Path) -> None:
        self.destination = Path(destination)
        self.created = None  # the outermost parent folder we create, removed again on abort
        self.fresh = not self.destination.exists() and not self.destination.is_symlink()
        self._final: Path | None = None  # fresh destination, partial extraction: the selected entries
        if self.fresh:
            parent = self.destination.absolute().parent
            if not parent.exists():
                self.created = parent
                while not self.created.parent.exists():
                    self.created = self.created.parent
                parent.mkdir(parents=True)
            self.root = Path(tempfile.mkdtemp(prefix=f".{self.destination.name}.osoa-zip-", suffix=".part",
                                              dir=parent))
        else:
            self.root = Path(tempfile.mkdtemp(prefix=".osoa-zip-", dir=self.destination))
        self.names = EntryNames()
        self._directories: list[tuple[str, int, int]] = []
        self._folders_ready: set[tuple[str, ...]] = set()  # staged folders path() made or checked

    def path(self, name: str, kind: str = "file") -> Path:
        """A fresh path in staging for a new entry, with its parents created.  Its folders
        are never links or files (EntryNames.claim), so nothing is written through a link.
        A folder checked (and made) once is not checked again: it stays a folder, since no
        later entry may claim its name or a name above it as anything else (EntryNames.claim)."""
        parts = self.names.claim(name, kind).parts
        path = self.root.joinpath(*parts)
        folder = parts[:-1]
        if folder in self._folders_ready:
            return path
        parent = path.parent
        if parent.is_symlink() or (parent.exists() and not parent.is_dir()):
            raise UnsafeEntry(f"path {name!r} goes through a link or a file")
        parent.mkdir(parents=True, exist_ok=True)
        self._folders_ready.add(folder)
        return path

    def finish_file(self, path: Path, mode: int, mtime_ns: int) -> None:
        os.chmod(path, mode & 0o7777)
        os.utime(path, ns=(mtime_ns, mtime_ns))

    def directory(self, name: str, mode: int, mtime_ns: int) -> None:
        self.path(name, "dir").mkdir(exist_ok=True)
        self._directories.append((name, mode, mtime_ns))

    def symlink(self, name: str, target: str) -> None:
        path = self.root.joinpath(*self.names.claim_symlink(name, target).parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, path)

    def drop_links_leaving(self) -> list[tuple[str, str]]:
        """Remove the links that leave DEST now that every link is known; (name, target) of each."""
        leaving = [(name, self.names.links[name]) for name in self.names.links_leaving()]
        for name, _ in leaving:
            self.root.joinpath(*PurePosixPath(name).parts).unlink()
            del self.names.kinds[name]
        return leaving

    def hardlink(self, name: str, target: str) -> None:
        self.names.check_hardlink(name, target)
        os.link(self.root.joinpath(*PurePosixPath(target).parts), self.path(name))

    def commit(self, force: bool, selected: Callable[[str], bool] = _everything) -> None:
        """Move the selected entries (a selected folder: all below it) into the
        destination; refuse conflicts unless forced."""
        if self.fresh:
            final = self.root
            if selected is not _everything:
                self._final = final = Path(tempfile.mkdtemp(prefix=f".{self.destination.name}.osoa-zip-",
                                                            suffix=".part", dir=self.root.parent))
                self._merge(self.root, final, "", force, selected, check_only=False)
            self._set_directory_times(final, selected)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(final, 0o777 & ~umask)  # what mkdir would have given it
            os.rename(final, self.destination)  # one step; fails if a non-empty folder appeared meanwhile
            self._final = None
            shutil.rmtree(self.root, ignore_errors=True)
            return
        self._merge(self.root, self.destination, "", force, selected, check_only=True)
        self._merge(self.root, self.destination, "", force, selected, check_only=False)
        self._set_directory_times(self.destination, selected)
        shutil.rmtree(self.root, ignore_errors=True)

    def _set_directory_times(self, base: Path, selected) -> None:
        """Modes and times of restored folders, deepest first (a read-only folder is filled by then)."""
        for name, mode, mtime_ns in sorted(self._directories, key=lambda d: -len(d[0].split("/"))):
            path = base.joinpath(*PurePosixPath(name).parts)
            if selected(name) and path.is_dir() and not path.is_symlink():
                os.chmod(path, mode & 0o7777)
                os.utime(path, ns=(mtime_ns, mtime_ns))

    def _merge(self, source: Path, target: Path, prefix: str, force: bool, selected, check_only: bool) -> None:
        for child in sorted(source.iterdir()):
            name, there = prefix + child.name, target / child.name
            real_dir = child.is_dir() and not child.is_symlink()
            if real_dir and (not selected(name) or there.is_dir() and not there.is_symlink()):
                if there.is_symlink() or there.exists() and not there.is_dir():
                    raise Conflict(f"{there} exists and is not a folder")
                self._merge(child, there, name + "/", force, selected, check_only)
            elif not selected(name):
                continue
            elif there.exists() or there.is_symlink():
                if not force or there.is_dir() and not there.is_symlink():
                    raise Conflict(f"{there} exists" + ("" if force else " (use -f to overwrite)"))
                if not check_only:
                    there.unlink()
                    os.replace(child, there)
            elif not check_only:
                there.parent.mkdir(parents=True, exist_ok=True)
                os.replace(child, there)

    def abort(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        if self._final is not None:
            shutil.rmtree(self._final, ignore_errors=True)
        if self.created is not None:
            shutil.rmtree(self.created, ignore_errors=True)
