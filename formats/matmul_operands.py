"""What a matmul of Encoded operands takes: 2-D tensors encoded in blocks
along K (their last axis), and the length of a block along K."""

from __future__ import annotations

from .encoded import Encoded


def check_operand(x: Encoded, name: str) -> None:
    """TypeError/ValueError (naming the argument ``name``) unless x is a 2-D
    torch tensor encoded in blocks along its last axis (or in tiles whose
    columns run along it): a matmul operand whose rows run along K."""
    if not isinstance(x, Encoded):
        raise TypeError(f"{name} must be an Encoded (a format's encode of a 2-D tensor), got {type(x).__name__}")
    if x.kind != "torch" or len(x.shape) != 2 or x.axis not in (1, -1, (0, 1)):
        raise ValueError(f"{name} must be a 2-D torch tensor encoded along its last axis (axis=1 or -1), "
                         f"got shape {x.shape}, axis {x.axis}, kind {x.kind!r}")
    try:
        x.validate()
    except ValueError as why:
        raise ValueError(f"{name}: {why}") from why


def k_block(x: Encoded) -> int:
    """How many elements of a row along K share a scale: the block size, a
    tile's width, or all of K for a whole-axis format."""
    fmt = x.format
    if getattr(fmt, "block_shape", None):
        return fmt.block_shape[1]
    return fmt.block_size or max(x.shape[1], 1)
