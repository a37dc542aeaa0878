"""``D`` written out once per element, for the multi-tensor kernels.

torch's multi-tensor (``_foreach_*``) kernels take a whole list in one launch only if every
tensor is dense and has the strides of its partners in the other lists; a stride-0 view of
``D`` broadcast over a weight's rows sends them to one launch per tensor. So the foreach
path reads ``D`` from a :class:`DensePreconditioner`: one buffer, in the dtype of the
tensors it serves, holding the value of ``D`` that each of their elements reads.

Its cost is that buffer (one element per preconditioned element, as much as ``exp_avg``)
and, each time ``D`` changes, two gathers per distinct row length, whatever the number of
layers: rows of one length are stored together, the distinct rows of ``D`` they read are
gathered once, then copied to every row by a second gather. The indices hold one entry
per feature of a distinct row and one per row, not one per element.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Target:
    """A tensor that receives ``D``: its elements, in memory order, form ``len(which)`` rows,
    and row ``i`` holds ``source[distinct[which[i]]]`` (``distinct``: ``(rows read, row)``)."""

    distinct: Tensor
    which: Tensor
    shape: torch.Size
    stride: tuple[int, ...]

    @property
    def numel(self) -> int:
        return len(self.which) * self.distinct.shape[1]


class DensePreconditioner:
    """The values of some source (``D``) spread over ``targets``; :attr:`views` holds one
    tensor per target, with its shape and strides, and :meth:`refresh` rewrites them all."""

    def __init__(self, targets: list[Target], dtype: torch.dtype, device):
        by_row: dict[int, list[int]] = {}
        for i, target in enumerate(targets):
            by_row.setdefault(target.distinct.shape[1], []).append(i)
        self.buffer = torch.empty(sum(t.numel for t in targets), dtype=dtype, device=device)
        self.views: list[Tensor] = [self.buffer] * len(targets)
        # Per row length: the distinct rows, which of them each row holds, and the rows.
        self._gathers: list[tuple[Tensor, Tensor, Tensor]] = []
        start = 0
        for row, members in by_row.items():
            region_start, distinct, which, distinct_so_far = start, [], [], 0
            for i in members:
                target = targets[i]
                distinct.append(target.distinct)
                which.append(target.which + distinct_so_far)
                distinct_so_far += len(target.distinct)
                self.views[i] = self.buffer.as_strided(target.shape, target.stride, start)
                start += target.numel
            region = self.buffer[region_start:start].view(-1, row)
            index = [torch.cat(distinct).to(device), torch.cat(which).to(device)]
            self._gathers.append((*index, region))

    @property
    def nbytes(self) -> int:
        indices = [index for gather in self._gathers for index in gather[:2]]
        return sum(t.numel() * t.element_size() for t in [self.buffer, *indices])

    def refresh(self, source: Tensor) -> None:
        """Write ``source`` (on the buffer's device, in its dtype) into every target's view."""
        for distinct, which, region in self._gathers:
            torch.index_select(source.take(distinct), 0, which, out=region)
