"""Stops NaN/Inf losses and gradients from reaching the weights and the checkpoints."""
import functools
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from mmdet.registry import HOOKS
from mmengine.hooks import Hook
from mmengine.optim import OptimWrapper, OptimWrapperDict
from torch import Tensor

from ...utils.errors import RetinaConfigError

_ACTIONS = ('skip', 'raise')


def _any_rank(flag: bool, device: torch.device) -> bool:
    """``flag`` OR-ed over all processes (identity without ``torch.distributed``).

    Every rank must take the same skip decision: under DDP a rank that skips ``backward`` while
    the others run it would leave their gradient all-reduce waiting forever.
    """
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        t = torch.tensor([float(flag)], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())
    return flag


def _all_finite(tensors: Sequence[Tensor]) -> bool:
    """Whether every element of every tensor is finite, with a single host sync."""
    if not tensors:
        return True
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


def non_finite_entries(obj: Any, prefix: str = '') -> List[str]:
    """Dotted keys of the floating tensors in a nested dict/list that hold a NaN or Inf.

    Args:
        obj (Any): a tensor or a nested structure of dicts, lists and tuples (e.g. a checkpoint dict
            with ``state_dict`` and ``optimizer``); other leaves are ignored.
        prefix (str): key prefix of ``obj``.

    Returns:
        List[str]: dotted keys of the non-finite tensors (``[prefix]`` when ``obj`` is one).
    """
    if isinstance(obj, Tensor):
        return [prefix] if obj.is_floating_point() and not _all_finite([obj]) else []
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    else:
        return []
    found = []
    for key, value in items:
        found += non_finite_entries(value, f'{prefix}.{key}' if prefix else str(key))
    return found


def describe_batch(data_batch: Optional[Dict[str, Any]]) -> str:
    """``img_id=.. img_path=..`` of each sample of an mmdet batch (``'unknown batch'`` if none)."""
    samples = (data_batch or {}).get('data_samples') or []
    parts = []
    for s in samples:
        meta = getattr(s, 'metainfo', {})
        parts.append(f'(img_id={meta.get("img_id")}, img_path={meta.get("img_path")})')
    return ', '.join(parts) if parts else 'unknown batch'


@HOOKS.register_module()
class RetinaNonFiniteGuardHook(Hook):
    """Skips (or stops at) optimizer steps whose loss or gradients are NaN/Inf.

    For training it wraps the runner's :class:`~mmengine.optim.OptimWrapper`:

    * ``update_params``: if the loss is not finite on any rank, nothing is done for this
      iteration (no ``backward``, no ``step``), so the weights and optimizer state (momentum,
      Adam moments) stay exactly as they were; accumulated gradients of earlier micro-batches
      are kept.
    * ``step`` (plain ``OptimWrapper`` only): if a gradient is not finite the step is skipped
      and the gradients are zeroed. ``AmpOptimWrapper`` is left to its ``GradScaler``, which
      already skips overflowing fp16 steps and lowers the loss scale.

    After such an iteration the hook logs the non-finite loss terms and the ``img_id`` /
    ``img_path`` of every image in the batch, then raises :class:`FloatingPointError` when
    ``action='raise'`` or after ``max_consecutive_skips`` skipped iterations in a row. The
    iteration still counts (LR schedule and data order are unchanged).

    Before any checkpoint is written, the model and optimizer state are checked, and a
    :class:`FloatingPointError` naming the bad tensors aborts the save if one is not finite,
    so a checkpoint with NaN/Inf weights is never written.

    Args:
        action (str): ``'skip'`` (skip the step and continue) or ``'raise'`` (stop with an error).
        max_consecutive_skips (int): with ``action='skip'``, raise after this many skipped
            iterations in a row (a diverged run should stop, not spin); ``>= 1``.
        check_grads (bool): also check gradients before each plain optimizer step (one extra host
            sync per step).
        check_checkpoint (bool): refuse to save checkpoints with non-finite tensors.
    """

    priority = 'VERY_HIGH'  # record the batch before other hooks can fail on it

    def __init__(self, action: str = 'skip', max_consecutive_skips: int = 20,
                 check_grads: bool = True, check_checkpoint: bool = True) -> None:
        if action not in _ACTIONS:
            raise RetinaConfigError(f'action must be one of {_ACTIONS}, got {action!r}')
        if (not isinstance(max_consecutive_skips, int) or isinstance(max_consecutive_skips, bool)
                or max_consecutive_skips < 1):
            raise RetinaConfigError(
                f'max_consecutive_skips must be an int >= 1, got {max_consecutive_skips!r}')
        self.action = action
        self.max_consecutive_skips = max_consecutive_skips
        self.check_grads = check_grads
        self.check_checkpoint = check_checkpoint
        self.skipped_iters: List[int] = []  # 1-based iterations whose step was skipped
        self._consecutive = 0
        self._events: List[str] = []
        # (wrapper, its own update_params / step attributes before ours, None where absent)
        self._wrapped: List[Tuple[OptimWrapper, Dict[str, Any]]] = []

    # -- optimizer wrapping ------------------------------------------------------------------
    def _guard_update_params(self, wrapper: OptimWrapper) -> Callable[..., None]:
        original = wrapper.update_params

        @functools.wraps(original)
        def update_params(loss: Tensor, step_kwargs: Optional[Dict] = None,
                          zero_kwargs: Optional[Dict] = None) -> None:
            local_bad = not _all_finite([loss.detach()])
            if _any_rank(local_bad, loss.device):
                self._events.append(f'loss={loss.detach().float().item()}' if local_bad
                                    else 'loss on another rank')
                return
            original(loss, step_kwargs=step_kwargs, zero_kwargs=zero_kwargs)

        return update_params

    def _guard_step(self, wrapper: OptimWrapper) -> Callable[..., None]:
        original = wrapper.step

        # wraps: keeps the attributes of mmengine's parameter-scheduler counter that ``step``
        # may already be (``_with_counter``), so the scheduler does not warn that ``step`` was
        # overridden
        @functools.wraps(original)
        def step(**kwargs: Any) -> None:
            grads = [p.grad for group in wrapper.optimizer.param_groups
                     for p in group['params'] if p.grad is not None]
            if not _all_finite(grads):
                self._events.append('gradient')
                wrapper.zero_grad()
                return
            original(**kwargs)

        return step

    def before_train(self, runner) -> None:
        ow = runner.optim_wrapper
        wrappers = list(ow.values()) if isinstance(ow, OptimWrapperDict) else [ow]
        for w in wrappers:
            # Instance attributes shadow the class methods (or the scheduler's own wrapper of
            # ``step``) just for this run; after_train puts back what was there.
            self._wrapped.append((w, {n: w.__dict__.get(n) for n in ('update_params', 'step')}))
            w.update_params = self._guard_update_params(w)
            if self.check_grads and getattr(w, 'loss_scaler', None) is None:
                w.step = self._guard_step(w)

    def after_train(self, runner) -> None:
        for w, before in self._wrapped:
            for name, attr in before.items():
                if attr is None:
                    w.__dict__.pop(name, None)
                else:
                    setattr(w, name, attr)
        self._wrapped.clear()

    # -- per iteration -----------------------------------------------------------------------
    def before_train_iter(self, runner, batch_idx: int,
                          data_batch: Optional[Dict[str, Any]] = None) -> None:
        self._events = []

    def after_train_iter(self, runner, batch_idx: int, data_batch: Optional[Dict] = None,
                         outputs: Optional[Dict[str, Any]] = None) -> None:
        if not self._events:
            self._consecutive = 0
            return
        self._consecutive += 1
        it = runner.iter + 1
        self.skipped_iters.append(it)
        terms = {k: round(float(v), 4) for k, v in (outputs or {}).items() if 'loss' in k}
        msg = (f'Non-finite {", ".join(self._events)} at iter {it}; loss terms {terms}; '
               f'batch: {describe_batch(data_batch)}. The optimizer step was skipped '
               f'({self._consecutive} in a row).')
        if self.action == 'raise' or self._consecutive >= self.max_consecutive_skips:
            raise FloatingPointError(
                msg + (' Stopping (action="raise").' if self.action == 'raise' else
                       f' Stopping: max_consecutive_skips={self.max_consecutive_skips}.'))
        runner.logger.warning(msg)

    def before_save_checkpoint(self, runner, checkpoint: Dict[str, Any]) -> None:
        if not self.check_checkpoint:
            return
        bad = non_finite_entries({k: checkpoint.get(k) for k in ('state_dict', 'optimizer')})
        if bad:
            raise FloatingPointError(
                f'Refusing to save a checkpoint at iter {runner.iter}: {len(bad)} tensor(s) are '
                f'not finite: {bad[:10]}{" ..." if len(bad) > 10 else ""}. The previous '
                f'checkpoint (see work_dir/last_checkpoint) is left intact.')
