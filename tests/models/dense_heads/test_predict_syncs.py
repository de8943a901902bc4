"""predict_by_feat waits for the device at most twice per batch: counted on the CPU with
torch.profiler, as the ops that would synchronise the host with a GPU stream. The NMS runs
the device's path (the greedy rounds a GPU without Triton runs; the Triton kernel has the same
two host reads), not mmcv's CPU kernel that CPU tensors use."""
import pytest
import torch
from head_pairs import METAS, build_pair, random_maps
from mmengine.config import ConfigDict
from sync_count import count_syncs

from mmdet_retina_plugin.models.dense_heads import retina_pair_selection
from mmdet_retina_plugin.models.layers import batched_nms


@pytest.fixture(autouse=True)
def device_nms_path(monkeypatch):
    monkeypatch.setattr(batched_nms, '_host_kernel', lambda boxes: False)


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
@pytest.mark.parametrize('together', [False, True], ids=['level-by-level', 'levels-together'])
def test_predict_by_feat_syncs_within_budget(monkeypatch, with_nms, budget, channels_last,
                                             together):
    # a GPU ranks the levels together (block_topk); the CPU level by level
    monkeypatch.setattr(retina_pair_selection, 'ranks_levels_together',
                        lambda rows, k: together)
    stock, ours = build_pair(test=dict(nms_pre=1000))
    cls, box, metas = batch_of_four(channels_last)
    assert (torch.cat([c.flatten() for c in cls]).sigmoid() > 0.05).sum() > 10000

    def predict(head):
        return lambda: head.predict_by_feat(cls, box, batch_img_metas=metas, rescale=True,
                                            with_nms=with_nms)

    # the count sees stock's level-by-level nonzero and per-image NMS
    assert sum(count_syncs(predict(stock)).values()) > 20
    ours_syncs = count_syncs(predict(ours))
    assert sum(ours_syncs.values()) <= budget, ours_syncs
    assert sum(len(r) for r in predict(ours)()) > 100


def test_nms_pre_minus_one_adds_one_read():
    _, ours = build_pair()
    cls, box, metas = batch_of_four()
    cfg = ConfigDict(ours.test_cfg, nms_pre=-1, score_thr=0.5)
    syncs = count_syncs(lambda: ours.predict_by_feat(cls, box, batch_img_metas=metas, cfg=cfg))
    assert sum(syncs.values()) <= 3, syncs
