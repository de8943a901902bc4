"""Counts, on the CPU, the operations that would make the host wait for a GPU stream."""
from collections import Counter

import pytest
import torch

# ops that read a device tensor's values on the host: a data-dependent size (nonzero,
# masked_select, unique) or a scalar (item, bool(), int() all reach _local_scalar_dense);
# mmcv's nms copies its result mask to the host, and its CPU kernel ends in masked_select
SYNC_OPS = ('aten::nonzero', 'aten::item', 'aten::_local_scalar_dense', 'aten::is_nonzero',
            'aten::masked_select')


def _is_sync(name: str) -> bool:
    return name in SYNC_OPS or name.startswith('aten::unique')


def count_syncs(fn) -> Counter:
    """Host syncs of ``fn()``: profiled sync ops (not those nested in another one, e.g.
    ``item`` -> ``_local_scalar_dense``) plus ``Tensor.tolist`` calls, which the profiler does
    not record."""
    tolist = torch.Tensor.tolist
    calls = []

    def counted_tolist(self):
        calls.append(self.shape)
        return tolist(self)

    with pytest.MonkeyPatch.context() as patch:  # its own: the caller's patches stay
        patch.setattr(torch.Tensor, 'tolist', counted_tolist)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            fn()
    counts = Counter()
    for event in prof.events():
        parent = event.cpu_parent
        while parent is not None and not _is_sync(parent.name):
            parent = parent.cpu_parent
        if _is_sync(event.name) and parent is None:
            counts[event.name] += 1
    counts['tolist'] = len(calls)
    return counts
