"""The archive container: framing, checksums, versions. Knows nothing of torch."""
