"""Lets mmengine checkpoints load under ``torch.load(weights_only=True)``.

Since torch 2.6 ``torch.load`` defaults to ``weights_only=True``. mmengine 0.10.7 calls it without
``weights_only``, so ``--resume`` and ``load_from`` die on the first non-tensor global a checkpoint
holds (``UnpicklingError: ... Unsupported global: GLOBAL
mmengine.logging.history_buffer.HistoryBuffer``).

Instead of turning ``weights_only`` off (which would let any checkpoint run arbitrary code), this
module adds to torch's allow-list exactly the globals that mmengine's own checkpoints pickle:

* ``HistoryBuffer`` (the message hub's logged scalars) and the numpy pieces its arrays and scalars
  are rebuilt from (``ndarray``, ``dtype``, ``_reconstruct``, ``scalar``), under numpy 1.x and 2.x
  module names, so checkpoints written under either load;
* ``builtins.getattr``, which pickle uses for HistoryBuffer's ``statistics_methods`` (bound class
  functions such as ``HistoryBuffer.mean``). It is replaced by :func:`_history_buffer_getattr`,
  which only resolves those statistics methods: ``getattr`` on anything else is refused.

Any other global, e.g. a pickled ``os.system`` or a user class, is still refused by torch.
"""
import pickle
from typing import Any, Callable, List, Tuple, Union

import numpy as np
import torch
from mmengine.logging.history_buffer import HistoryBuffer

# The defaults HistoryBuffer fills in lazily, on its first instance.
_DEFAULT_STATISTICS = ('min', 'max', 'current', 'mean')


def _history_buffer_getattr(obj: Any, name: str) -> Any:
    """``getattr`` restricted to the statistics methods of :class:`HistoryBuffer`."""
    allowed = set(_DEFAULT_STATISTICS) | set(HistoryBuffer._statistics_methods)
    if obj is HistoryBuffer and name in allowed:
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(
        f'mmdet_retina_plugin refused getattr({obj!r}, {name!r}) while loading a checkpoint: only '
        f'HistoryBuffer statistics methods {sorted(allowed)} are allowed.')


def _numpy_globals() -> List[Tuple[Callable, str]]:
    """numpy globals of arrays and scalars, under each module path numpy 1.x and 2.x pickle with."""
    core = np._core if hasattr(np, '_core') else np.core  # numpy 2 renamed core to _core
    entries = []
    for module in ('numpy.core.multiarray', 'numpy._core.multiarray'):
        entries.append((core.multiarray._reconstruct, f'{module}._reconstruct'))
        entries.append((core.multiarray.scalar, f'{module}.scalar'))
    entries.append((np.ndarray, 'numpy.ndarray'))
    entries.append((np.dtype, 'numpy.dtype'))
    # numpy 2 pickles some dtypes by their class (e.g. numpy.dtypes.Float64DType).
    dtypes = getattr(np, 'dtypes', None)
    if dtypes is not None:
        for name in dir(dtypes):
            cls = getattr(dtypes, name)
            if isinstance(cls, type) and issubclass(cls, np.dtype):
                entries.append((cls, f'numpy.dtypes.{name}'))
    return entries


def mmengine_checkpoint_globals() -> List[Union[Callable, Tuple[Callable, str]]]:
    """The allow-list entries (``add_safe_globals`` format) that mmengine checkpoints need."""
    return [HistoryBuffer, (_history_buffer_getattr, 'builtins.getattr'), *_numpy_globals()]


def allow_mmengine_checkpoint_globals() -> None:
    """Adds :func:`mmengine_checkpoint_globals` to torch's weights-only allow-list.

    Idempotent; a no-op on torch versions without ``add_safe_globals`` (< 2.4), whose ``torch.load``
    does not default to ``weights_only=True`` anyway.
    """
    add = getattr(torch.serialization, 'add_safe_globals', None)
    if add is not None:
        add(mmengine_checkpoint_globals())
