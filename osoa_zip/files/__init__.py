"""Files on disk: scanning sources into entries, restoring entries safely."""
