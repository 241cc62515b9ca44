"""Folder <-> archive: the library API behind the CLI, usable from Python.

    compress(sources, output, ...)      pack.py
    decompress(source, destination)     unpack.py
    test_archive(source)                unpack.py (decode and verify, write nothing)
    extract_entry(source, name, output) unpack.py (one entry's restored bytes)
"""
from .adapt.config import AdaptationConfig
from .container.format import ArchiveError
from .files.restore import RefusedEntries
from .layout import Summary, UsageError
from .models.catalog import ModelError
from .pack import compress
from .unpack import decompress, extract_entry, test_archive

test_archive.__test__ = False  # not a pytest test

__all__ = ["compress", "decompress", "extract_entry", "test_archive", "Summary", "UsageError", "ArchiveError",
           "RefusedEntries", "ModelError", "AdaptationConfig"]
