"""The flag byte that starts every coded batch (docs/FORMAT.md), and the chain head's length.

Torch-free, so that `info` and `list` can read them without loading the engine.
"""
from __future__ import annotations

FLAG_PRETRAINED = 0x01      # this batch is coded with θ0, not the adapted model
FLAG_ROLLBACK = 0x02        # the update made after the previous batch is undone first
FLAG_SEGMENT_START = 0x04   # the model restarts from θ0 here (first batch of a segment)
FLAG_GIVE_UP = 0x08         # with FLAG_PRETRAINED: θ0, no adaptation, for the rest of this track (format 1.1)
FLAG_CHAIN_HEAD = 0x10      # the stream of this batch and the next ones on one bits-back stack (format 1.4)
FLAG_CHAINED = 0x20         # this batch is decoded from the stream of the chain's head (no bytes of its own)
KNOWN_FLAGS = FLAG_PRETRAINED | FLAG_ROLLBACK | FLAG_SEGMENT_START | FLAG_GIVE_UP | FLAG_CHAIN_HEAD | FLAG_CHAINED
CHAIN_LENGTH_BYTES = 2      # after a chain head's flag byte: how many batches the chain holds (little-endian)

# What `compress -v` says of each flag.
FLAG_NOTES = ((FLAG_PRETRAINED, "coded with the pretrained model"), (FLAG_ROLLBACK, "last update undone"),
              (FLAG_SEGMENT_START, "segment start"), (FLAG_GIVE_UP, "adaptation given up"),
              (FLAG_CHAIN_HEAD, "starts a chain"), (FLAG_CHAINED, "chained"))


def declared_chain_length(payload: bytes) -> int:
    """How many batches a chain head's payload says its stream holds (1 for any other batch)."""
    if not payload or not payload[0] & FLAG_CHAIN_HEAD:
        return 1
    return int.from_bytes(payload[1:1 + CHAIN_LENGTH_BYTES], "little")
