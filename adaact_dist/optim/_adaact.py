"""AdaAct: Adam-like steps scaled by the second moment of each layer's input activations."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from adaact_dist.optim import _state_keys as keys
from adaact_dist.optim._capture import DirectCallCapture
from adaact_dist.optim._discovery import find_model
from adaact_dist.optim._foreach_plan import ForeachPlan, GroupLists
from adaact_dist.optim._fragments import (
    BIAS,
    OTHER,
    WEIGHT,
    Fragment,
    Piece,
    compile_fragments,
    precond_view,
)
from adaact_dist.optim._functional import adaact, fold_statistics, refresh_preconditioner, sgd
from adaact_dist.optim._layers import PreconditionedLayer, find_layers, unwrap_model

OTHER_RULES = ("sgd", "sgd_momentum")
# Below this mean tensor size the CPU multi-tensor kernels beat a per-tensor loop.
_CPU_FOREACH_MAX_MEAN_NUMEL = 1 << 16


class StatsDistributor(Protocol):
    """Averages the flat activation statistics across data-parallel ranks, in place."""

    def average_(self, flat: Tensor) -> None: ...


class AdaAct(Optimizer):
    r"""AdaAct (Seung, Lee, Ko, ICDM Workshops 2024).

    "An Adaptive Method Stabilizing Activations for Enhanced Generalization". Adam
    divides by the running second moment of the gradient; AdaAct divides by that of
    the layer's input activations, per input feature, so every weight that reads one
    feature shares one step size. For each ``nn.Linear`` / ``nn.Conv2d`` whose weight is
    optimised, with ``a`` the (bias-augmented) input and ``t`` the step:

    .. math::
        A_t &= \operatorname{mean}_{\text{samples}}(a \odot a), \qquad
        V_t = \beta_2 V_{t-1} + (1 - \beta_2) A_t, \qquad
        D_t = 1 / \bigl(\sqrt{V_t / (1 - \beta_2^t)} + \epsilon\bigr) \\
        M_t &= \beta_1 M_{t-1} + (1 - \beta_1) G_t, \qquad
        W \leftarrow W (1 - \eta \lambda) - \eta \, \frac{M_t}{1 - \beta_1^t} \, D_t

    where ``D_t`` broadcasts along the rows of ``W`` viewed as ``(d_out, d_in)``. A
    convolution's samples are its (image, output position) patches; groups, stride,
    padding and dilation are honoured without forming patches. Other parameters (norms,
    embeddings) follow ``other_rule``: plain SGD with decoupled weight decay, as in the
    paper's code, or SGD with momentum.

    Statistics come from forward pre-hooks, only in training mode with gradients
    enabled; every call of a module counts (weight sharing, gradient accumulation), and
    they are folded into ``V`` once per ``step()``. ``zero_grad()`` also drops the
    pending statistics, so a step skipped by a gradient scaler leaves no trace. ``V`` is
    averaged over data-parallel ranks through ``distributor`` every ``stats_sync_every``
    steps (starting with the first), and ``D`` is recomputed then and frozen until the
    next sync, which keeps replicas identical.

    The layers are found once, when the optimizer is built: in ``model`` if it is given,
    else in the innermost module that holds all of ``params``, found among the live
    modules (:mod:`adaact_dist.optim._discovery` says why so). Either way the hooks sit on
    the layers themselves, so the model may be wrapped (DDP, DeepSpeed) or compiled
    afterwards, and the same model gives the same statistics, steps and state dict.

    Engines that replace the parameters in ``param_groups`` by flat tensors (DeepSpeed
    ZeRO and its bf16/fp16 wrappers) describe them with :meth:`map_flat_tensor`;
    ``adaact_dist.distributed.deepspeed_initialize`` does that for DeepSpeed.

    Args:
        params: tensors or parameter-group dicts to optimise (per-group ``lr``,
            ``betas``, ``eps``, ``weight_decay`` are honoured).
        lr: learning rate :math:`\eta`.
        betas: :math:`(\beta_1, \beta_2)` for the momentum and the activation EMA.
        eps: added to :math:`\sqrt{\hat V}`.
        weight_decay: decoupled weight decay :math:`\lambda`.
        model: the module that owns ``params`` (optional: found from ``params`` when
            omitted); may be wrapped in DDP, DeepSpeed or ``torch.compile``. Its hooked
            layers are keyed by module path in checkpoints.
        stats_sync_every: refresh ``D`` (and average ``V`` across ranks) every k steps.
        distributor: averages the flat ``V`` across ranks; ``None`` for one process.
        other_rule: ``"sgd"`` (the paper's) or ``"sgd_momentum"`` for parameters that
            are not preconditioned.
        other_momentum: momentum of ``"sgd_momentum"``.
        foreach: use multi-tensor kernels; ``None`` picks them for GPU tensors and, on
            CPU, for groups of small tensors only: large ones measured faster in a
            per-tensor loop (``benchmarks/optimizer_core.md``). That path keeps ``D``
            written out per element (as much memory as ``exp_avg``) so that each
            multi-tensor op covers a whole group in one launch.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        model: nn.Module | None = None,
        stats_sync_every: int = 1,
        distributor: StatsDistributor | None = None,
        other_rule: str = "sgd",
        other_momentum: float = 0.9,
        foreach: bool | None = None,
    ):
        _check_options(
            model=model,
            stats_sync_every=stats_sync_every,
            other_rule=other_rule,
            other_momentum=other_momentum,
            foreach=foreach,
        )
        _check_hyperparameters(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults)
        for group in self.param_groups:
            _check_hyperparameters(**{k: group[k] for k in defaults})
        self.stats_sync_every = stats_sync_every
        self.distributor = distributor
        self.other_rule = other_rule
        self.other_momentum = other_momentum
        self.foreach = foreach
        self._stats_step = 0
        self._folded = False  # this step's statistics are in V already
        self._flat: dict[int, tuple[Tensor, list[Piece]]] = {}
        self._plans: dict[int, ForeachPlan] = {}  # by id of the group, for the foreach path
        self._precond_version = 0  # counts the changes of D, which the plans copy
        self._bind_layers(model)
        self._table.register_hooks()
        self._capture = DirectCallCapture(self._table)
        self._capture.attach(self._table.root)
        self.register_state_dict_post_hook(_save_statistics)
        self.register_load_state_dict_pre_hook(_load_statistics)
        self.register_load_state_dict_pre_hook(_remember_group_positions)
        self.register_load_state_dict_post_hook(_follow_new_groups)

    def _bind_layers(self, model: nn.Module | None) -> None:
        """Find the layers whose weights are among the parameters (in ``model``, or in the
        module found to own them) and each parameter's role: a layer's weight, its bias, or
        another parameter updated by ``other_rule``."""
        params_in_groups = [p for group in self.param_groups for p in group["params"]]
        if model is None:
            model = find_model(self.param_groups)
        model_params = {id(p) for p in unwrap_model(model).parameters()}
        foreign = [tuple(p.shape) for p in params_in_groups if id(p) not in model_params]
        if foreign:
            raise ValueError(
                f"{len(foreign)} parameter(s) given to AdaAct are not parameters of `model` "
                f"(shapes {foreign[:5]}): pass the model that owns them"
            )
        self._table = find_layers(model, params_in_groups)
        if not self._table.layers:
            raise ValueError(
                "AdaAct found no nn.Linear or nn.Conv2d among the parameters given: it "
                "preconditions those layers' weights; use another optimizer for this model"
            )
        group_of = {id(p): i for i, group in enumerate(self.param_groups) for p in group["params"]}
        # A layer's beta2 and eps come from the group holding its weight. Engines swap
        # ``param_groups`` for a one-group list while they step group by group, so keep the
        # group dicts themselves; their positions only matter across load_state_dict.
        self._layer_group = [group_of[id(layer.weight)] for layer in self._table.layers]
        self._layer_groups = [self.param_groups[i] for i in self._layer_group]
        self._layer_index = {id(layer): i for i, layer in enumerate(self._table.layers)}
        self._roles: dict[int, tuple[str, PreconditionedLayer | None]] = {}
        for layer in self._table.layers:
            self._roles[id(layer.weight)] = (WEIGHT, layer)
            if layer.bias is not None and id(layer.bias) in group_of:
                self._roles[id(layer.bias)] = (BIAS, layer)
        self._known = {id(p) for p in params_in_groups}

    @property
    def layers(self) -> list[PreconditionedLayer]:
        """The preconditioned layers, in model order."""
        return self._table.layers

    @property
    def functional_layers(self) -> list[str]:
        """Layers whose weight the model passes to ``F.linear``/``F.conv2d`` itself instead of
        calling the module (BEiT's and EVA's ``qkv``); their statistics come from those calls.
        Known after the first training forward."""
        return [layer.name for layer in self._capture.scopes]

    def remove_hooks(self) -> None:
        """Stop collecting statistics (the optimizer cannot step afterwards)."""
        self._table.remove_hooks()
        self._capture.detach()

    def activation_second_moments(self) -> dict[str, Tensor]:
        """Each layer's running ``V`` per input feature (a copy), keyed by module path."""
        return {
            layer.name: layer.second_moment.view(layer.feature_shape).clone()
            for layer in self.layers
        }

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        if hasattr(self, "_known"):  # groups added after construction
            self._known.update(id(p) for p in self.param_groups[-1]["params"])

    def map_flat_tensor(self, flat: Tensor, fragments: list[Fragment]) -> None:
        """Declare that ``flat``, a tensor an engine put in ``param_groups``, holds ``fragments``.

        Every element of ``flat`` in a fragment is updated like the element of the model
        parameter it mirrors (weight elements scaled by ``D`` of their layer and input
        feature, bias elements by the constant feature, others by ``other_rule``); elements
        in no fragment (padding) are left alone. The state of ``flat`` is one flat
        ``exp_avg`` (also the momentum of ``sgd_momentum`` elements) and one ``step``.
        """
        if flat.dim() != 1 and not flat.is_contiguous():
            raise ValueError(
                f"Invalid flat tensor of shape {tuple(flat.shape)}: must be 1-D or contiguous"
            )
        pieces = compile_fragments(
            flat, list(fragments), self._roles, self._layer_index, self._known
        )
        self._flat[id(flat)] = (flat, pieces)
        self._plans.clear()

    def unmapped_tensors(self) -> list[Tensor]:
        """Tensors in ``param_groups`` that AdaAct was not given and that no one mapped."""
        return [
            p
            for group in self.param_groups
            for p in group["params"]
            if id(p) not in self._known and id(p) not in self._flat
        ]

    def statistics_state_dict(self) -> dict[str, Any]:
        """``V``, ``D`` and step counts of every layer (keyed by module path), and the sync phase.

        Part of :meth:`state_dict`; engines whose checkpoints keep only per-parameter state
        save and load it on its own. It is identical on all data-parallel ranks.
        """
        return {
            keys.SYNC_STEP: self._stats_step,
            keys.LAYERS: {
                layer.name: {
                    keys.SECOND_MOMENT: layer.second_moment.detach().clone(),
                    keys.PRECOND: layer.precond.detach().clone(),
                    keys.LAYER_STEP: layer.step,
                }
                for layer in self.layers
            },
        }

    def load_statistics_state_dict(self, stats: dict[str, Any]) -> None:
        """Restore what :meth:`statistics_state_dict` returned; pending statistics are dropped."""
        saved, ours = stats[keys.LAYERS], {layer.name: layer for layer in self.layers}
        if saved.keys() != ours.keys():
            missing, extra = sorted(ours.keys() - saved.keys()), sorted(saved.keys() - ours.keys())
            raise ValueError(
                f"AdaAct checkpoint layers do not match the model: missing {missing[:5]}, "
                f"unexpected {extra[:5]}; load it into the same architecture"
            )
        for name, entry in saved.items():
            layer = ours[name]
            if entry[keys.SECOND_MOMENT].numel() != layer.numel:
                raise ValueError(
                    f"AdaAct checkpoint layer {name!r} has {entry[keys.SECOND_MOMENT].numel()} "
                    f"features, the model's has {layer.numel}"
                )
            layer.second_moment.copy_(entry[keys.SECOND_MOMENT].view(-1))
            layer.precond.copy_(entry[keys.PRECOND].view(-1))
            layer.step = int(entry[keys.LAYER_STEP])
        self._stats_step = int(stats[keys.SYNC_STEP])
        self._precond_version += 1
        self.drop_pending_statistics()

    def drop_pending_statistics(self) -> None:
        """End the step: forget statistics that no step folded (an engine skipped the step)."""
        self._table.clear_pending()
        self._folded = False

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear gradients and the statistics gathered for them."""
        super().zero_grad(set_to_none)
        self.drop_pending_statistics()

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._check_tensors()
        self.update_preconditioner()
        momentum = self.other_momentum if self.other_rule == "sgd_momentum" else 0.0
        for group in self.param_groups:
            foreach = self._use_foreach(group)
            if foreach:
                lists = self._foreach_lists(group, momentum)
            else:
                lists = self._init_group(group, momentum)
            adaact(
                lists.params,
                lists.grads,
                lists.exp_avgs,
                lists.preconds,
                lists.steps,
                lr=group["lr"],
                beta1=group["betas"][0],
                weight_decay=group["weight_decay"],
                foreach=foreach,
            )
            sgd(
                lists.others,
                lists.other_grads,
                lists.other_buffers,
                lr=group["lr"],
                momentum=momentum,
                weight_decay=group["weight_decay"],
                foreach=foreach,
            )
        return loss

    @torch.no_grad()
    def update_preconditioner(self) -> None:
        """Fold this step's statistics into ``V``; on a sync step average ``V`` and refresh ``D``.

        ``step()`` calls this first. A later call before new statistics arrive (DeepSpeed
        ZeRO calls ``step()`` once per parameter group) finds the step already folded and
        does nothing, so each optimizer step folds, and syncs, exactly once; ``zero_grad()``
        or :meth:`drop_pending_statistics` end the step.
        """
        layers = self.layers
        if self._folded and not any(layer.pending_count for layer in layers):
            return
        starved = [
            layer.name
            for layer in layers
            if layer.weight.grad is not None and layer.pending_count == 0
        ]
        if starved:
            raise RuntimeError(
                f"AdaAct.step(): {len(starved)} layer(s) have gradients but no activation "
                f"statistics since the last step (e.g. {starved[:3]}). Run the forward pass "
                "with model.train() and gradients enabled (not under torch.no_grad() or "
                "inference_mode), and call zero_grad() before that forward, not between "
                "forward and step(). AdaAct reads a layer's inputs when its module is called, "
                "or when its weight is passed to F.linear/F.conv2d (found in the first training "
                "forward, outside torch.compile); a weight used any other way (x @ weight.T) "
                "needs one of those, or leave it out of AdaAct's params and give it to another "
                "optimizer."
            )
        folded = [i for i, layer in enumerate(layers) if layer.pending_count > 0]
        if not folded:
            return
        for beta2, members in self._by_group_value(folded, lambda g: g["betas"][1]):
            fold_statistics(
                [layers[i].second_moment for i in members],
                [layers[i].pending_sum for i in members],
                [layers[i].pending_count for i in members],
                beta2=beta2,
            )
        for i in folded:
            layers[i].step += 1
        self._table.clear_pending()
        self._folded = True
        self._stats_step += 1
        if (self._stats_step - 1) % self.stats_sync_every == 0:
            self._sync_and_refresh()

    def _sync_and_refresh(self) -> None:
        if self.distributor is not None:
            self.distributor.average_(self._table.second_moment)
        live = [i for i, layer in enumerate(self.layers) if layer.step > 0]
        key = lambda g: (g["betas"][1], g["eps"])  # noqa: E731
        for (beta2, eps), members in self._by_group_value(live, key):
            refresh_preconditioner(
                [self.layers[i].second_moment for i in members],
                [self.layers[i].precond for i in members],
                [self.layers[i].step for i in members],
                beta2=beta2,
                eps=eps,
            )
        self._precond_version += 1

    def _by_group_value(self, indices, value_of):
        """Split layer indices by a hyperparameter of their group, for foreach calls."""
        buckets: dict[Any, list[int]] = {}
        for i in indices:
            buckets.setdefault(value_of(self._layer_groups[i]), []).append(i)
        return buckets.items()

    def _check_tensors(self) -> None:
        """Refuse a step over tensors AdaAct cannot place, before it changes anything."""
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                if param.grad.is_sparse:
                    raise RuntimeError("AdaAct does not support sparse gradients")
                if id(param) not in self._known and id(param) not in self._flat:
                    raise RuntimeError(
                        f"AdaAct.step() met a parameter of shape {tuple(param.shape)} that it "
                        "was not given: an engine replaced the model's parameters (DeepSpeed "
                        "ZeRO, bf16 or fp16). Build the engine with "
                        "adaact_dist.distributed.deepspeed_initialize (or describe the tensor "
                        "with map_flat_tensor())."
                    )

    def _role(self, param: Tensor) -> tuple[str | None, PreconditionedLayer | None]:
        """A model parameter's role and layer; ``(None, None)`` for a mapped flat tensor."""
        if id(param) in self._flat:
            return None, None
        return self._roles.get(id(param), (OTHER, None))

    def _state_of(self, param: Tensor, momentum: float) -> dict[str, Tensor]:
        """The state of ``param``, created on its first step (as torch's Adam): ``exp_avg`` and
        ``step`` where elements are preconditioned (a flat tensor's ``exp_avg`` also holds the
        momentum of its other elements), a momentum buffer for the other rule's parameters."""
        state = self.state[param]
        if self._role(param)[0] == OTHER:
            if momentum and keys.MOMENTUM_BUFFER not in state:
                state[keys.MOMENTUM_BUFFER] = torch.zeros_like(param)
        elif not state:
            state[keys.STEP] = torch.tensor(0.0)
            state[keys.EXP_AVG] = torch.zeros_like(param, memory_format=torch.preserve_format)
        return state

    def _foreach_lists(self, group: dict[str, Any], momentum: float) -> GroupLists:
        """The group's lists from its :class:`ForeachPlan`, built again when its tensors (their
        storage, their state) changed, its dense ``D`` refreshed when ``D`` changed."""
        tensors = [p for p in group["params"] if p.grad is not None]
        for param in tensors:
            self._state_of(param, momentum)
        plan = self._plans.pop(id(group), None)
        if plan is None or plan.key != ForeachPlan.key_of(tensors, self.state):
            plan = None  # frees the old plan's dense D before the new one is allocated
            plan = ForeachPlan(tensors, self.state, self._roles, self._flat, self.layers, momentum)
        self._plans[id(group)] = plan
        plan.refresh(self._table.precond, 1.0 / (1.0 + group["eps"]), self._precond_version)
        return plan.step_lists()

    def _init_group(self, group: dict[str, Any], momentum: float) -> GroupLists:
        """The for-loop path's lists of one group's update, built anew each step.

        A model parameter joins them whole (a weight viewed as ``(groups, rows, ...)`` so
        that ``D`` broadcasts over its rows); a flat tensor an engine put in its place joins
        as the views of its pieces. Preconditioned elements get ``exp_avg`` and ``step``;
        the others follow ``other_rule``.
        """
        lists = GroupLists()
        # The bias column reads a constant 1, so V-hat is exactly 1 and D is one number.
        bias_preconds: dict[tuple[torch.device, torch.dtype], Tensor] = {}
        for param in group["params"]:
            if param.grad is None:
                continue
            role, layer = self._role(param)
            state = self._state_of(param, momentum)
            if role == OTHER:
                lists.others.append(param)
                lists.other_grads.append(param.grad)
                if momentum:
                    lists.other_buffers.append(state[keys.MOMENTUM_BUFFER])
                continue
            state[keys.STEP] += 1
            step = int(state[keys.STEP].item())
            where = (param.device, param.dtype)
            if where not in bias_preconds:
                bias_preconds[where] = torch.full(
                    (), 1.0 / (1.0 + group["eps"]), dtype=param.dtype, device=param.device
                )
            bias_precond = bias_preconds[where]
            if role is None:  # a flat tensor of an engine's, described by pieces
                self._add_pieces(lists, param, state[keys.EXP_AVG], step, bias_precond, momentum)
            elif role == WEIGHT:
                rows = (layer.groups, -1)
                lists.add(
                    param.unflatten(0, rows),
                    param.grad.unflatten(0, rows),
                    state[keys.EXP_AVG].unflatten(0, rows),
                    layer.precond_for_weight(),
                    step,
                )
            else:
                lists.add(
                    param, param.grad, state[keys.EXP_AVG], bias_precond.expand_as(param), step
                )
        return lists

    def _add_pieces(
        self,
        lists: GroupLists,
        flat: Tensor,
        exp_avg: Tensor,
        step: int,
        bias_precond: Tensor,
        momentum: float,
    ) -> None:
        """A flat tensor's pieces as views, each with the block of ``D`` it reads."""
        _, pieces = self._flat[id(flat)]
        values, grad, exp_avg = flat.detach().view(-1), flat.grad.view(-1), exp_avg.view(-1)
        table = self._table.precond
        if table.device != values.device or table.dtype != values.dtype:
            table = table.to(device=values.device, dtype=values.dtype)
        for piece in pieces:
            span = slice(piece.start, piece.start + piece.numel)
            if piece.kind == OTHER:
                lists.others.append(values[span])
                lists.other_grads.append(grad[span])
                if momentum:
                    lists.other_buffers.append(exp_avg[span])
                continue
            if piece.kind == WEIGHT:
                layer = self.layers[piece.layer]
                layer_precond = table[layer.offset : layer.offset + layer.numel]
                precond = precond_view(piece, layer_precond, layer)
            else:
                precond = bias_precond.expand(piece.shape)
            lists.add(
                values[span].view(piece.shape),
                grad[span].view(piece.shape),
                exp_avg[span].view(piece.shape),
                precond,
                step,
            )

    def _use_foreach(self, group: dict[str, Any]) -> bool:
        """The flag, or by measurement: multi-tensor kernels on GPUs; on CPU, where they are
        C++ loops, only for groups of small tensors (ZeRO pieces, biases, norms), since large
        ones measured faster one by one (``benchmarks/optimizer_core.md``)."""
        if self.foreach is not None:
            return self.foreach
        tensors = [p for p in group["params"] if p.grad is not None]
        if not tensors:
            return False
        if tensors[0].device.type != "cpu":
            return True
        sizes = [t.numel() for t in tensors if id(t) not in self._flat]
        sizes += [p.numel for t in tensors if id(t) in self._flat for p in self._flat[id(t)][1]]
        return sum(sizes) < _CPU_FOREACH_MAX_MEAN_NUMEL * len(sizes)


def _check_options(
    *, model: Any, stats_sync_every: Any, other_rule: str, other_momentum: float, foreach: Any
) -> None:
    """AdaAct's own keywords (those beside the per-group hyperparameters)."""
    if model is not None and not isinstance(model, nn.Module):
        raise TypeError(
            f"Invalid model={type(model).__name__}: must be the nn.Module that owns the "
            "parameters, e.g. AdaAct(model.parameters(), model=model), or None"
        )
    if not isinstance(stats_sync_every, int) or stats_sync_every < 1:
        raise ValueError(f"Invalid stats_sync_every={stats_sync_every!r}: must be an int >= 1")
    if other_rule not in OTHER_RULES:
        raise ValueError(f"Invalid other_rule={other_rule!r}: must be one of {OTHER_RULES}")
    if not 0.0 <= other_momentum < 1.0:
        raise ValueError(f"Invalid other_momentum={other_momentum!r}: must be in [0, 1)")
    if foreach not in (None, True, False):
        raise ValueError(f"Invalid foreach={foreach!r}: must be None, True or False")


def _check_hyperparameters(*, lr, betas, eps, weight_decay) -> None:
    if not isinstance(lr, (float, int, Tensor)) or lr < 0.0:
        raise ValueError(f"Invalid lr={lr!r}: must be a number >= 0")
    if len(betas) != 2 or not all(0.0 <= beta < 1.0 for beta in betas):
        raise ValueError(f"Invalid betas={betas!r}: must be two numbers in [0, 1)")
    if not eps > 0.0:
        raise ValueError(f"Invalid eps={eps!r}: must be > 0")
    if not weight_decay >= 0.0:
        raise ValueError(f"Invalid weight_decay={weight_decay!r}: must be >= 0")


def _remember_group_positions(optimizer: AdaAct, state_dict: dict[str, Any]) -> None:
    """Where each layer's group sits now: load_state_dict builds new group dicts there."""
    position = {id(group): i for i, group in enumerate(optimizer.param_groups)}
    optimizer._layer_group = [position[id(group)] for group in optimizer._layer_groups]


def _follow_new_groups(optimizer: AdaAct) -> None:
    """Point layers at the new group dicts; the plans of the old ones hold stale state."""
    optimizer._layer_groups = [optimizer.param_groups[i] for i in optimizer._layer_group]
    optimizer._plans.clear()


def _save_statistics(optimizer: AdaAct, state_dict: dict[str, Any]) -> dict[str, Any]:
    state_dict[keys.ACTIVATION_STATS] = optimizer.statistics_state_dict()
    return state_dict


def _load_statistics(optimizer: AdaAct, state_dict: dict[str, Any]) -> dict[str, Any]:
    stats = state_dict.pop(keys.ACTIVATION_STATS, None)
    if stats is None:
        raise ValueError(
            "This optimizer state dict has no AdaAct activation statistics "
            f"({keys.ACTIVATION_STATS!r}): it was not saved by AdaAct.state_dict()"
        )
    optimizer.load_statistics_state_dict(stats)
    return state_dict
