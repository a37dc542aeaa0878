"""The foreach path's lists for one parameter group, built once and kept between steps.

The for-loop path builds its views every step and broadcasts ``D`` over rows: free in
memory, but a broadcast view sends torch's multi-tensor kernels to one launch per tensor,
and building views costs ops per tensor. A :class:`ForeachPlan` builds every view when
the group's tensors change, reads ``D`` from a dense copy refreshed only when ``D``
changes (:mod:`~adaact_dist.optim._dense_precond`), and leaves a step to look up the
gradients (one split per flat tensor) and advance all step counts in one op: a fixed
number of ops per group, whatever the number of layers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from adaact_dist.optim import _state_keys as keys
from adaact_dist.optim._dense_precond import DensePreconditioner, Target
from adaact_dist.optim._fragments import OTHER, WEIGHT, Piece, piece_rows
from adaact_dist.optim._layers import PreconditionedLayer


@dataclass
class GroupLists:
    """One group's update as parallel lists: preconditioned tensors, then the others."""

    params: list[Tensor] = field(default_factory=list)
    grads: list[Tensor] = field(default_factory=list)
    exp_avgs: list[Tensor] = field(default_factory=list)
    preconds: list[Tensor] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    others: list[Tensor] = field(default_factory=list)
    other_grads: list[Tensor] = field(default_factory=list)
    other_buffers: list[Tensor] = field(default_factory=list)

    def add(self, param: Tensor, grad: Tensor, exp_avg: Tensor, precond: Tensor, step: int):
        self.params.append(param)
        self.grads.append(grad)
        self.exp_avgs.append(exp_avg)
        self.preconds.append(precond)
        self.steps.append(step)


GradSource = tuple[Tensor, int | None]
"""Where an entry's gradient is: ``tensor.grad``, or chunk ``i`` of a flat tensor's gradient."""


class ForeachPlan:
    """One group's update lists with ``D`` dense, valid while :meth:`key_of` gives ``key``.

    Args:
        tensors: the group's tensors that have gradients, their state already created.
        state: the optimizer's state.
        roles, flat, layers: the optimizer's tables of where elements read ``D``: the
            role of each model parameter, the pieces of each flat tensor, the layers.
        momentum: the other rule's momentum (its elements keep a buffer unless it is 0).
    """

    def __init__(
        self,
        tensors: list[Tensor],
        state: dict,
        roles: dict[int, tuple[str, PreconditionedLayer | None]],
        flat: dict[int, tuple[Tensor, list[Piece]]],
        layers: list[PreconditionedLayer],
        momentum: float,
    ):
        self.key = self.key_of(tensors, state)
        self._layers = layers
        # The bias column reads a constant 1: its D is one number, kept after the layers' D.
        self._bias_feature = sum(layer.numel for layer in layers)
        self._params: list[Tensor] = []
        self._grads: list[GradSource] = []
        self._exp_avgs: list[Tensor] = []
        self._preconds: list[Tensor] = []
        self._others: list[Tensor] = []
        self._other_grads: list[GradSource] = []
        self._other_buffers: list[Tensor] = []
        self._step_counts: list[Tensor] = []
        self._step_of: list[int] = []  # entry -> its step count
        self._flat_splits: list[tuple[Tensor, list[int]]] = []
        self._targets: list[Target] = []  # entry -> where its dense D is and what it holds
        for tensor in tensors:
            tensor_state = state[tensor]
            if id(tensor) in flat:
                self._step_counts.append(tensor_state[keys.STEP])
                self._add_flat(tensor, tensor_state, flat[id(tensor)][1], momentum)
                continue
            role, layer = roles.get(id(tensor), (OTHER, None))
            if role == OTHER:
                self._add_other(tensor, (tensor, None), tensor_state.get(keys.MOMENTUM_BUFFER))
                continue
            self._step_counts.append(tensor_state[keys.STEP])
            if role == WEIGHT:
                target = _weight_target(layer)
            else:
                target = self._bias_target(tensor.numel())
            self._add(tensor, (tensor, None), tensor_state[keys.EXP_AVG], target)
        self._dense = self._build_dense()
        self._refreshed: tuple[int, float] | None = None

    @staticmethod
    def key_of(tensors: list[Tensor], state: dict) -> tuple:
        """What a plan is built from: the tensors, their storage and their state tensors. A
        step whose key differs (a gradient appeared or went, a state was loaded, an engine
        moved a tensor) needs a new plan."""
        return tuple((id(t), t.data_ptr(), *map(id, state[t].values())) for t in tensors)

    @property
    def nbytes(self) -> int:
        """Memory held beyond the optimizer's state: the dense ``D`` and its indices."""
        return sum(dense.nbytes for dense in self._dense)

    def refresh(self, table: Tensor, bias_value: float, version: int) -> None:
        """Write ``D`` (the flat per-feature ``table``, whose contents are ``version``) and the
        bias feature's ``bias_value`` into the dense copies, unless they hold them already."""
        if self._refreshed == (version, bias_value):
            return
        source = F.pad(table, (0, 1), value=bias_value)
        for dense in self._dense:
            dense.refresh(source.to(dense.buffer.device, dense.buffer.dtype))
        self._refreshed = (version, bias_value)

    def step_lists(self) -> GroupLists:
        """This step's lists: the current gradients, and every step count advanced by one."""
        chunks = {id(t): t.grad.view(-1).split(sizes) for t, sizes in self._flat_splits}

        def grad(source: GradSource) -> Tensor:
            tensor, chunk = source
            return tensor.grad if chunk is None else chunks[id(tensor)][chunk]

        counts: list[float] = []
        if self._step_counts:
            torch._foreach_add_(self._step_counts, 1.0)
            counts = torch.stack(self._step_counts).tolist()
        return GroupLists(
            params=self._params,
            grads=[grad(source) for source in self._grads],
            exp_avgs=self._exp_avgs,
            preconds=self._preconds,
            steps=[int(counts[i]) for i in self._step_of],
            others=self._others,
            other_grads=[grad(source) for source in self._other_grads],
            other_buffers=self._other_buffers,
        )

    def _add(self, param: Tensor, grad: GradSource, exp_avg: Tensor, target: Target) -> None:
        """A preconditioned entry; its dense ``D`` is laid out once all entries are known."""
        self._params.append(param)
        self._grads.append(grad)
        self._exp_avgs.append(exp_avg)
        self._step_of.append(len(self._step_counts) - 1)
        self._targets.append(target)

    def _add_other(self, param: Tensor, grad: GradSource, buffer: Tensor | None) -> None:
        self._others.append(param)
        self._other_grads.append(grad)
        if buffer is not None:
            self._other_buffers.append(buffer)

    def _add_flat(self, flat: Tensor, state: dict, pieces: list[Piece], momentum: bool) -> None:
        """A flat tensor's pieces, as chunks of one split (padding between them is skipped)."""
        values, exp_avg = flat.detach().view(-1), state[keys.EXP_AVG].view(-1)
        ordered = sorted(pieces, key=lambda piece: piece.start)
        sizes: list[int] = []
        chunk_of: list[int] = []
        end = 0
        for piece in ordered:
            if piece.start > end:
                sizes.append(piece.start - end)
            chunk_of.append(len(sizes))
            sizes.append(piece.numel)
            end = piece.start + piece.numel
        if end < values.numel():
            sizes.append(values.numel() - end)
        self._flat_splits.append((flat, sizes))
        value_chunks, exp_avg_chunks = values.split(sizes), exp_avg.split(sizes)
        for piece, chunk in zip(ordered, chunk_of):
            if piece.kind == OTHER:
                buffer = exp_avg_chunks[chunk] if momentum else None
                self._add_other(value_chunks[chunk], (flat, chunk), buffer)
                continue
            if piece.kind == WEIGHT:
                distinct, which = piece_rows(piece, self._layers[piece.layer])
                target = Target(distinct, which, torch.Size([piece.numel]), (1,))
            else:
                target = self._bias_target(piece.numel)
            self._add(value_chunks[chunk], (flat, chunk), exp_avg_chunks[chunk], target)

    def _bias_target(self, count: int) -> Target:
        """``count`` bias elements: rows of one element, all reading the bias feature."""
        distinct, which = torch.tensor([[self._bias_feature]]), torch.zeros(count, dtype=torch.long)
        return Target(distinct, which, torch.Size([count]), (1,))

    def _build_dense(self) -> list[DensePreconditioner]:
        """One dense ``D`` per device and dtype among the entries; their views join the lists."""
        buckets: dict[tuple[torch.device, torch.dtype], list[int]] = {}
        for i, param in enumerate(self._params):
            buckets.setdefault((param.device, param.dtype), []).append(i)
        self._preconds = list(self._params)  # placeholders, each replaced by its view of D
        dense = []
        for (device, dtype), members in buckets.items():
            preconditioner = DensePreconditioner([self._targets[i] for i in members], dtype, device)
            for i, view in zip(members, preconditioner.views):
                self._preconds[i] = view
            dense.append(preconditioner)
        self._targets.clear()
        return dense


def _weight_target(layer: PreconditionedLayer) -> Target:
    """A whole weight: its rows, the ``D`` row of their group each, laid out like the weight.

    Where the weight's rows follow one another in memory (contiguous, channels_last), the
    dense ``D`` takes its strides, with each ``D`` row in the order the weight stores a row;
    otherwise it is contiguous (still exact, but then that tensor leaves the fast route)."""
    weight, positions = layer.weight, layer.table_positions()
    which = torch.arange(layer.groups).repeat_interleave(weight.shape[0] // layer.groups)
    strides = torch.empty_like(weight, device="meta").stride()  # weight's own, if dense
    if strides[0] != layer.row:
        contiguous = torch.empty(weight.shape, device="meta").stride()
        return Target(positions, which, weight.shape, contiguous)
    logical = torch.arange(layer.row).view(weight.shape[1:])
    stored = torch.empty_strided(weight.shape[1:], strides[1:], dtype=torch.long).copy_(logical)
    order = stored.as_strided((layer.row,), (1,))  # which element of a row each slot holds
    return Target(positions[:, order], which, weight.shape, strides)
