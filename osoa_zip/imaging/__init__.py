"""Image I/O (which files take the model path) and tiling into batches."""
