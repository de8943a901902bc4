"""predict_by_feat waits for the device at most twice per batch: counted on the CPU with
torch.profiler, as the ops that would synchronise the host with a GPU stream."""
from collections import Counter

import pytest
import torch
from head_pairs import METAS, build_pair, random_maps
from mmengine.config import ConfigDict

# ops that read a device tensor's values on the host: a data-dependent size (nonzero,
# masked_select, unique) or a scalar (item, bool(), int() all reach _local_scalar_dense);
# mmcv's nms copies its result mask to the host, and its CPU kernel ends in masked_select
SYNC_OPS = ('aten::nonzero', 'aten::item', 'aten::_local_scalar_dense', 'aten::is_nonzero',
            'aten::masked_select')


def _is_sync(name: str) -> bool:
    return name in SYNC_OPS or name.startswith('aten::unique')


def count_syncs(fn, monkeypatch) -> Counter:
    """Host syncs of ``fn()``: profiled sync ops (not those nested in another one, e.g.
    ``item`` -> ``_local_scalar_dense``) plus ``Tensor.tolist`` calls, which the profiler does
    not record."""
    tolist = torch.Tensor.tolist
    calls = []

    def counted_tolist(self):
        calls.append(self.shape)
        return tolist(self)

    monkeypatch.setattr(torch.Tensor, 'tolist', counted_tolist)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    monkeypatch.undo()
    counts = Counter()
    for event in prof.events():
        parent = event.cpu_parent
        while parent is not None and not _is_sync(parent.name):
            parent = parent.cpu_parent
        if _is_sync(event.name) and parent is None:
            counts[event.name] += 1
    counts['tolist'] = len(calls)
    return counts


def batch_of_four(channels_last=False):
    """Four images, five levels, thousands of (anchor, class) pairs above score_thr."""
    cls, box = random_maps()
    cls, box = ([torch.cat([m, m.flip(0)]) for m in maps] for maps in (cls, box))
    if channels_last:
        cls, box = ([m.contiguous(memory_format=torch.channels_last) for m in maps]
                    for maps in (cls, box))
    return cls, box, METAS + METAS


@pytest.mark.parametrize('with_nms,budget', [(True, 2), (False, 1)])
@pytest.mark.parametrize('channels_last', [False, True])
def test_predict_by_feat_syncs_within_budget(with_nms, budget, channels_last, monkeypatch):
    stock, ours = build_pair(test=dict(nms_pre=1000))
    cls, box, metas = batch_of_four(channels_last)
    assert (torch.cat([c.flatten() for c in cls]).sigmoid() > 0.05).sum() > 10000

    def predict(head):
        return lambda: head.predict_by_feat(cls, box, batch_img_metas=metas, rescale=True,
                                            with_nms=with_nms)

    # the count sees stock's level-by-level nonzero and per-image NMS
    assert sum(count_syncs(predict(stock), monkeypatch).values()) > 20
    ours_syncs = count_syncs(predict(ours), monkeypatch)
    assert sum(ours_syncs.values()) <= budget, ours_syncs
    assert sum(len(r) for r in predict(ours)()) > 100


def test_nms_pre_minus_one_adds_one_read(monkeypatch):
    _, ours = build_pair()
    cls, box, metas = batch_of_four()
    cfg = ConfigDict(ours.test_cfg, nms_pre=-1, score_thr=0.5)
    syncs = count_syncs(lambda: ours.predict_by_feat(cls, box, batch_img_metas=metas, cfg=cfg),
                        monkeypatch)
    assert sum(syncs.values()) <= 3, syncs
