"""A fast path that never breaks a run: :func:`fast_or_plain`.

The plugin's fast paths (a compiled region, the focal loss's Triton and compiled backends, the
head's one canvas for all levels) compute what a plain path computes. Where one raises, the
plain path gives the result instead; only if that succeeds is the fast path blamed, disabled
and warned about, once. An error of the inputs, which the plain path raises too, is raised as
the plain path raises it and leaves the fast path on.
"""
from __future__ import annotations

import warnings
from typing import Callable, TypeVar

Out = TypeVar('Out')


class Switch:
    """A fast path's state where nothing else holds it: on until :meth:`off` (the ``disable``
    of :func:`fast_or_plain`)."""

    def __init__(self) -> None:
        self.on = True

    def off(self) -> None:
        self.on = False


def fast_or_plain(fast: Callable[[], Out], plain: Callable[[], Out],
                  disable: Callable[[], None], what: str, instead: str) -> Out:
    """``fast()``; where it raises, ``plain()``, then ``disable()`` and one warning.

    Args:
        fast (Callable[[], Out]): the fast path.
        plain (Callable[[], Out]): the path that computes the same; its own exception
            propagates (the fast path is not blamed for it).
        disable (Callable[[], None]): turns the fast path off for later calls.
        what (str): the fast path, for the warning (``'RetinaFocalLoss: the triton backend'``).
        instead (str): what runs from now on (``'running level by level'``).

    Returns:
        Out: the fast path's result, or the plain path's.
    """
    try:
        return fast()
    except Exception as err:  # noqa: BLE001  (any exception: a missing or too old API too)
        out = plain()
        disable()
        reason = (str(err).strip().splitlines() or [''])[0]
        warnings.warn(f'{what} failed ({type(err).__name__}: {reason}); {instead} from now on.')
        return out
