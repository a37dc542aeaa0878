"""AdaAct on flat tensors that an engine put in place of the model's parameters.

DeepSpeed (ZeRO stage 1/2, its bf16 and fp16 wrappers) hands the optimizer flat fp32
tensors instead of the model's parameters: a rank's slice of all parameters of a
group, concatenated. A :class:`Fragment` says which run of which parameter sits where
in such a tensor; runs can start and end in the middle of a weight row, and whatever
no fragment covers (alignment padding) is never touched.

Each fragment is compiled once into at most five *pieces*: reshaped views of the flat
tensor whose elements read one block of ``D``, so that the update is the same
:func:`~adaact_dist.optim._functional.adaact` call as for whole parameters, over views.
The for-loop path rebuilds the views every step from these integer descriptions; the
foreach path keeps them, with ``D`` written out per element (``_foreach_plan``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from adaact_dist.optim._layers import PreconditionedLayer

WEIGHT, BIAS, OTHER = "weight", "bias", "other"


@dataclass(frozen=True)
class Fragment:
    """``numel`` elements of ``param.flatten()`` from ``param_offset`` on, stored at
    ``flat[flat_offset : flat_offset + numel]``."""

    param: Tensor
    param_offset: int
    flat_offset: int
    numel: int


@dataclass(frozen=True)
class Piece:
    """A view ``flat[start : start + numel].view(shape)`` and the block of ``D`` it reads.

    For weights the block is ``D[group : group + groups, col : col + cols]`` of the
    layer's ``D`` viewed as ``(groups, row length)``, broadcast to ``shape``. ``layer`` is
    an index into the optimizer's layers (``-1`` for parameters that are not
    preconditioned).
    """

    kind: str
    layer: int
    start: int
    shape: tuple[int, ...]
    group: int = 0
    groups: int = 1
    col: int = 0
    cols: int = 0

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def weight_pieces(
    layer: PreconditionedLayer, index: int, param_offset: int, flat_offset: int, numel: int
) -> list[Piece]:
    """Split a run of a weight into a partial head row, whole rows and a partial tail row.

    Whole rows are split further at group boundaries: rows of one group share ``D[g]``,
    a block of whole groups reads ``D[g : g + k]`` broadcast over each group's rows.
    """
    row = layer.row
    rows_per_group = layer.weight.shape[0] // layer.groups
    pieces: list[Piece] = []
    pos, end, at = param_offset, param_offset + numel, flat_offset

    def take(count: int, shape: tuple[int, ...], group: int, groups: int, col: int, cols: int):
        nonlocal pos, at
        pieces.append(Piece(WEIGHT, index, at, shape, group, groups, col, cols))
        pos += count
        at += count

    if pos % row:  # head: the end of a row that started before this run
        col = pos % row
        count = min(end - pos, row - col)
        take(count, (count,), (pos // row) // rows_per_group, 1, col, count)
    whole_end = pos + (end - pos) // row * row
    while pos < whole_end:
        first_row = pos // row
        group = first_row // rows_per_group
        if first_row % rows_per_group == 0 and whole_end - pos >= rows_per_group * row:
            count_groups = (whole_end - pos) // (rows_per_group * row)
            shape = (count_groups, rows_per_group, row)
            take(count_groups * rows_per_group * row, shape, group, count_groups, 0, row)
        else:  # rows up to the end of this group
            rows = min((group + 1) * rows_per_group - first_row, (whole_end - pos) // row)
            take(rows * row, (rows, row), group, 1, 0, row)
    if pos < end:  # tail: the start of a row that ends after this run
        count = end - pos
        take(count, (count,), (pos // row) // rows_per_group, 1, 0, count)
    return pieces


def precond_view(piece: Piece, layer_precond: Tensor, layer: PreconditionedLayer) -> Tensor:
    """The block of ``D`` that ``piece`` reads, broadcast to ``piece.shape`` (no copy)."""
    grid = layer_precond.view(layer.groups, layer.row)
    block = grid[piece.group : piece.group + piece.groups, piece.col : piece.col + piece.cols]
    if len(piece.shape) == 1:
        return block[0]
    if len(piece.shape) == 2:
        return block[0].expand(piece.shape)
    return block.unsqueeze(1).expand(piece.shape)


def piece_rows(piece: Piece, layer: PreconditionedLayer) -> tuple[Tensor, Tensor]:
    """A weight piece as rows of positions in the flat table of ``D``: the distinct rows it
    reads, and for each of its rows which one (a partial row counts as rows of one element)."""
    positions = layer.table_positions()
    block = positions[piece.group : piece.group + piece.groups, piece.col : piece.col + piece.cols]
    if len(piece.shape) == 1:
        return block.reshape(-1, 1), torch.arange(piece.numel)
    return block, torch.arange(len(block)).repeat_interleave(piece.numel // block.numel())


def compile_fragments(
    flat: Tensor,
    fragments: list[Fragment],
    roles: dict[int, tuple[str, PreconditionedLayer | None]],
    layer_index: dict[int, int],
    known: set[int],
) -> list[Piece]:
    """Check ``fragments`` against ``flat`` and the optimizer's parameters; return pieces."""
    total = flat.numel()
    pieces: list[Piece] = []
    covered: list[tuple[int, int]] = []
    for fragment in fragments:
        param, numel = fragment.param, fragment.numel
        if id(param) not in known:
            raise ValueError(
                f"A fragment refers to a tensor of shape {tuple(param.shape)} that was not given "
                "to this AdaAct: map flat tensors onto the model parameters AdaAct was built with"
            )
        if numel <= 0 or fragment.param_offset < 0 or fragment.flat_offset < 0:
            raise ValueError(f"Invalid fragment {_describe(fragment)}: offsets >= 0, numel > 0")
        if fragment.param_offset + numel > param.numel() or fragment.flat_offset + numel > total:
            raise ValueError(
                f"Invalid fragment {_describe(fragment)}: it runs past the end of the parameter "
                f"({param.numel()} elements) or of the flat tensor ({total} elements)"
            )
        covered.append((fragment.flat_offset, fragment.flat_offset + numel))
        role, layer = roles.get(id(param), (OTHER, None))
        if role == WEIGHT:
            index = layer_index[id(layer)]
            pieces += weight_pieces(
                layer, index, fragment.param_offset, fragment.flat_offset, numel
            )
        else:
            index = -1 if layer is None else layer_index[id(layer)]
            pieces.append(Piece(role, index, fragment.flat_offset, (numel,)))
    covered.sort()
    for (_, end), (start, _) in zip(covered, covered[1:]):
        if start < end:
            raise ValueError(
                f"Fragments overlap at element {start} of a flat tensor of {total}: each element "
                "of a flat tensor must belong to at most one parameter"
            )
    return pieces


def _describe(fragment: Fragment) -> str:
    return (
        f"(param shape {tuple(fragment.param.shape)}, param_offset={fragment.param_offset}, "
        f"flat_offset={fragment.flat_offset}, numel={fragment.numel})"
    )
