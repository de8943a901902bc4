"""Compiling with ``torch.compile`` without ever breaking a run.

* :func:`is_compiling`: whether dynamo is tracing the caller; code with caches or fast paths of
  its own then runs its plain torch form, traced into the graph;
* :func:`check_compile_cfg`: a ``compile_cfg`` of ``torch.compile`` keywords, checked at build
  time;
* :class:`Compiler`: runs functions compiled, eager where compiling fails (warned once,
  :func:`~.fallback.fast_or_plain`);
* :func:`compile_forward`: a module's forward through a :class:`Compiler`
  (:func:`forward_compiler` finds it).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, TypeVar

import torch

from .errors import RetinaConfigError
from .fallback import fast_or_plain


def is_compiling() -> bool:
    """Whether dynamo is tracing the caller.

    ``torch.compiler.is_compiling`` appeared in torch 2.3 and ``torch._dynamo.is_compiling``
    may go; an install without either is taken as not compiling.
    """
    for owner in ('compiler', '_dynamo'):
        fn = getattr(getattr(torch, owner, None), 'is_compiling', None)
        if fn is not None:
            return bool(fn())
    return False


#: ``torch.compile`` keywords ``compile_cfg`` may set (``fullgraph`` defaults to True and
#: ``dynamic`` to False here: one graph per shape, as CUDA graphs need)
COMPILE_KEYS = ('backend', 'mode', 'options', 'dynamic', 'fullgraph')
_MODES = (None, 'default', 'reduce-overhead', 'max-autotune', 'max-autotune-no-cudagraphs')

Out = TypeVar('Out')


def check_compile_cfg(compile_cfg: Optional[Mapping[str, Any]]) -> Optional[Dict[str, Any]]:
    """``compile_cfg`` as ``torch.compile`` keywords, or None (eager).

    Raises:
        RetinaConfigError: not a mapping, a key outside :data:`COMPILE_KEYS`, or an unknown
            ``mode``.
    """
    if compile_cfg is None:
        return None
    if not isinstance(compile_cfg, Mapping):
        raise RetinaConfigError(f'compile_cfg must be None or a dict of torch.compile keywords '
                                f'{COMPILE_KEYS}, got {compile_cfg!r}')
    unknown = sorted(set(compile_cfg) - set(COMPILE_KEYS))
    if unknown:
        raise RetinaConfigError(f'compile_cfg keys must be among {COMPILE_KEYS}, got {unknown}')
    if compile_cfg.get('mode') not in _MODES:
        raise RetinaConfigError(f"compile_cfg.mode must be one of {_MODES}, got "
                                f"{compile_cfg['mode']!r}")
    return dict(dict(fullgraph=True, dynamic=False), **compile_cfg)


@functools.lru_cache(maxsize=None)
def _compiled(fn: Callable[..., Out], cfg: Tuple[Tuple[str, Any], ...]) -> Callable[..., Out]:
    # One compiled function per function and config, shared by every module (passed as an
    # argument, guarded by dynamo): deep copies of a module (EMA models) need nothing of their own.
    kwargs = dict(cfg)
    if kwargs.get('options') is not None:
        kwargs['options'] = dict(kwargs['options'])
    return torch.compile(fn, **kwargs)


class Compiler:
    """Runs functions compiled with one ``compile_cfg``, eager where that fails.

    Args:
        compile_cfg (Dict[str, Any]): ``torch.compile`` keywords (:func:`check_compile_cfg`).
        owner (str): who compiles, for the warning.
    """

    def __init__(self, compile_cfg: Dict[str, Any], owner: str = 'RetinaNetHead') -> None:
        self.cfg = tuple(sorted((k, _hashable(v)) for k, v in compile_cfg.items()))
        self.owner = owner
        self.failed = False

    def __call__(self, fn: Callable[..., Out], *args: Any, **kwargs: Any) -> Out:
        """``fn(*args, **kwargs)`` compiled (eager inside another compiled or traced region,
        and after a failure)."""
        if self.failed or is_compiling() or torch.jit.is_tracing():
            return fn(*args, **kwargs)
        return fast_or_plain(lambda: _compiled(fn, self.cfg)(*args, **kwargs),
                             lambda: fn(*args, **kwargs), self._disable,
                             f'{self.owner}: compiling {fn.__name__}', 'running it eager')

    def _disable(self) -> None:
        self.failed = True


def _hashable(value: Any) -> Any:
    """``compile_cfg`` values as a hashable key (``options`` is a dict)."""
    if isinstance(value, Mapping):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    return value


class CompiledForward:
    """A module's ``forward`` (set as its instance attribute) run through a :class:`Compiler`;
    a deep copy of the module (e.g. an EMA model) gets one of its own, bound to the copy.

    Its class's ``forward`` is compiled with the module as an argument: one code object per
    class, so dynamo's cache of graphs per code object holds one class's shapes and modes only.
    """

    def __init__(self, module: torch.nn.Module, compiler: Compiler) -> None:
        self.module = module
        self.compiler = compiler

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.compiler(type(self.module).forward, self.module, *args, **kwargs)


def compile_forward(module: torch.nn.Module, compiler: Compiler) -> bool:
    """Makes ``module``'s forward run through ``compiler`` (``nn.Module.__call__`` and its hooks
    are unchanged; state-dict names too). Returns False if it already did."""
    if forward_compiler(module) is not None:
        return False
    module.forward = CompiledForward(module, compiler)
    return True


def forward_compiler(module: torch.nn.Module) -> Optional[Compiler]:
    """The :class:`Compiler` that :func:`compile_forward` gave ``module``'s forward, or None."""
    forward = module.__dict__.get('forward')
    return forward.compiler if isinstance(forward, CompiledForward) else None
