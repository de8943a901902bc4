"""Reports the bad gts that :func:`~.retina_gts.check_gts` counted, without waiting for the
device."""
from __future__ import annotations

import warnings
from collections import deque
from typing import Deque, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor


class _PendingReport(NamedTuple):
    """Bad-gt counts on their way to the host: readable once ``ready`` has completed."""

    counts: Tensor
    ready: Optional[torch.cuda.Event]
    names: Tuple[str, ...]


class GtReporter:
    """Raises for non-finite gts and warns once per image about degenerate ones, without
    making the host wait for the device.

    Counts on the CPU are read at once. Device counts are copied ``non_blocking`` into pinned
    memory behind a recorded CUDA event and read when the event has completed: at the next
    :meth:`submit` or :meth:`poll` that finds it done, and at the latest at the next
    :meth:`submit` (one training step later; by then the device has long passed the event, so
    waiting on it costs nothing) or :meth:`flush`. On CUDA the ``ValueError`` for a non-finite
    gt therefore comes from the next step's loss; meanwhile the box was left out of the
    assignment, so no NaN reached the losses.
    """

    def __init__(self) -> None:
        self._pending: Deque[_PendingReport] = deque()

    def submit(self, counts: Tensor, batch_img_metas: Sequence[dict]) -> None:
        """Queues one batch's counts, after reporting every batch queued before it.

        Args:
            counts (Tensor): ``(2, B)`` long from :func:`~.retina_gts.check_gts`.
            batch_img_metas (Sequence[dict]): per-image metas; ``img_id`` / ``img_path`` name
                the image when present.

        Raises:
            ValueError: a gt box of this batch (on the CPU) or of an earlier one has a NaN or
                infinite coordinate.
        """
        self.flush()
        names = tuple(f"img_id={m.get('img_id')!r} img_path={m.get('img_path')!r}"
                      for m in batch_img_metas)
        ready = None
        if counts.device.type != 'cpu':
            host = torch.empty(counts.shape, dtype=counts.dtype, pin_memory=True)
            counts = host.copy_(counts.detach(), non_blocking=True)
            ready = torch.cuda.Event()
            ready.record()
        self._pending.append(_PendingReport(counts, ready, names))
        self.poll()

    def poll(self) -> None:
        """Reports the queued batches whose counts have reached the host, oldest first."""
        while self._pending and (self._pending[0].ready is None
                                 or self._pending[0].ready.query()):
            self._report(self._pending.popleft())

    def flush(self) -> None:
        """Reports every queued batch, waiting for the device where a copy is still on its
        way."""
        while self._pending:
            pending = self._pending.popleft()
            # query first: a completed event needs no synchronize call (which CUDA's sync
            # debug mode reports, and which would wait if the copy were still on its way)
            if pending.ready is not None and not pending.ready.query():
                pending.ready.synchronize()
            self._report(pending)

    @staticmethod
    def _report(pending: _PendingReport) -> None:
        non_finite, degenerate = pending.counts.tolist()  # on the host: no sync
        if any(non_finite):
            raise ValueError('gt bboxes must be finite; NaN or inf in ' + '; '.join(
                f'{n} box(es) of image {i} ({pending.names[i]})'
                for i, n in enumerate(non_finite) if n))
        for i, n in enumerate(degenerate):
            if n:
                warnings.warn(f'{n} gt box(es) of image {i} ({pending.names[i]}) have width or '
                              'height <= 0 (inside the image) and are ignored: no positive '
                              'anchors, no box loss', stacklevel=3)
