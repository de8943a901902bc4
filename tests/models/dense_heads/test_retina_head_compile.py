"""The head's dense work compiled whole (``compile_cfg``) with static gt counts
(``static_num_gts``): the same losses, gradients and detections as eager, one graph per shape
whatever the gt counts, and an eager fallback that never breaks a run.

Compiled with AOTAutograd and a backend that counts the graphs it is handed (forward and
backward apart) and runs them as they are: what inductor or CUDA graphs would be given.
"""
import copy
import warnings

import pytest
import torch
from functorch.compile import make_boxed_func
from head_pairs import METAS, C, build_pair, random_gts
from mmdet.structures import DetDataSample
from torch._dynamo.backends.common import aot_autograd

from mmdet_retina_plugin.models.dense_heads.retina_gts import pad_gts
from mmdet_retina_plugin.utils.compiling import Compiler, check_compile_cfg
from mmdet_retina_plugin.utils.errors import RetinaConfigError

STATIC_GTS = 8
FEATS = tuple(torch.randn(2, C, 256 // s, 320 // s, generator=torch.Generator().manual_seed(s))
              for s in (8, 16, 32, 64, 128))


class GraphCounter:
    """A dynamo backend: AOTAutograd, recording the forward and backward graphs it gets."""

    def __init__(self):
        self.graphs = []
        self.backend = aot_autograd(fw_compiler=self._compiler('forward'),
                                    bw_compiler=self._compiler('backward'))

    def _compiler(self, kind):
        def compile_graph(gm, example_inputs):
            self.graphs.append(kind)
            return make_boxed_func(gm.forward)
        return compile_graph


@pytest.fixture
def counter():
    torch._dynamo.reset()
    yield GraphCounter()
    torch._dynamo.reset()


def heads(counter, **ours):
    """Our head eager, and a copy of it compiled with the counting backend."""
    ours = dict(dict(loss_cls=dict(type='RetinaFocalLoss'), static_num_gts=STATIC_GTS), **ours)
    eager = build_pair('RetinaIoUAssigner', ours_only=ours)[1]
    compiled = copy.deepcopy(eager)
    compiled.dense_compiler = Compiler(check_compile_cfg(dict(backend=counter.backend)))
    return eager, compiled


def samples(counts, seed=0):
    out = []
    for i, (n, meta) in enumerate(zip(counts, METAS)):
        sample = DetDataSample(metainfo=meta)
        sample.gt_instances = random_gts(n, meta['img_shape'], seed=seed + i)
        out.append(sample)
    return out


def loss_and_grads(head, data_samples):
    feats = [f.clone().requires_grad_() for f in FEATS]
    losses = head.loss(feats, data_samples)
    assert [len(v) for v in losses.values()] == [5, 5]  # per level, as mmdet's AnchorHead
    total = sum(sum(v) for v in losses.values())
    head.zero_grad()
    total.backward()
    grads = [f.grad for f in feats] + [p.grad for p in head.parameters()]
    return torch.stack([torch.stack(v) for v in losses.values()]).detach(), grads


def assert_same_training(eager, compiled, data_samples):
    expected, expected_grads = loss_and_grads(eager, data_samples)
    got, grads = loss_and_grads(compiled, data_samples)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-7)
    return got


def test_compiled_training_equals_eager_with_one_graph_for_every_gt_count(counter):
    eager, compiled = heads(counter)
    for counts, seed in (((3, 5), 0), ((STATIC_GTS, 0), 5), ((0, 0), 0), ((1, 2), 9)):
        losses = assert_same_training(eager, compiled, samples(counts, seed))
        assert (losses[1].sum() > 0) == (sum(counts) > 0)  # positives reach the box loss
    assert counter.graphs == ['forward', 'backward']


def test_without_static_gts_each_gt_count_is_a_new_shape(counter):
    """What ``static_num_gts`` prevents: the padded gt count is part of the loss's shapes."""
    eager, compiled = heads(counter, static_num_gts=None)
    for counts in ((3, 5), (2, 6), (1, 2)):
        assert_same_training(eager, compiled, samples(counts))
    assert counter.graphs.count('forward') == 3  # largest counts 5, 6, 2: three shapes


def test_more_gts_than_the_static_count_warn_once_and_stay_exact(counter):
    eager, compiled = heads(counter)
    with pytest.warns(UserWarning, match=r'11 gts, more than static_num_gts=8.*warned once'):
        assert_same_training(eager, compiled, samples((11, 2)))
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert_same_training(eager, compiled, samples((12, 2)))


def test_moving_average_normaliser_is_updated_by_the_compiled_step(counter):
    eager, compiled = heads(counter, avg_factor_momentum=0.9)
    for counts, seed in (((3, 5), 0), ((4, 1), 3)):
        assert_same_training(eager, compiled, samples(counts, seed))
        assert float(compiled.avg_factor_ema) == float(eager.avg_factor_ema) > 0


def scoring(head):
    """Class logits around sigmoid 0.3-0.7: predictions have candidates above score_thr."""
    with torch.no_grad():
        head.retina_cls.bias.zero_()
        head.retina_cls.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    return head.eval()


@pytest.mark.parametrize('rescale', [False, True])
def test_compiled_inference_equals_eager_with_one_graph(counter, rescale):
    eager, compiled = heads(counter)
    compiled.load_state_dict(scoring(eager).state_dict())
    compiled.eval()
    with torch.no_grad():
        expected = eager.predict(FEATS, samples((0, 0)), rescale=rescale)
        for _ in range(2):
            got = compiled.predict(FEATS, samples((0, 0)), rescale=rescale)
    assert counter.graphs == ['forward']
    assert all(len(r) > 10 for r in expected)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g.bboxes, e.bboxes)
        torch.testing.assert_close(g.scores, e.scores)
        assert torch.equal(g.labels, e.labels)


def test_inference_sized_on_the_device_runs_eager(counter):
    """``nms_pre <= 0`` sizes the top-k by a host read of the scores: no fixed shapes."""
    eager, compiled = heads(counter, test_cfg=dict(nms_pre=-1, score_thr=0.3, max_per_img=50,
                                                   nms=dict(type='nms', iou_threshold=0.5)))
    compiled.load_state_dict(scoring(eager).state_dict())
    with torch.no_grad():
        got = compiled.eval().predict(FEATS, samples((0, 0)))
        expected = eager.predict(FEATS, samples((0, 0)))
    assert counter.graphs == []
    for g, e in zip(got, expected):
        assert torch.equal(g.bboxes, e.bboxes) and len(g) > 0


def test_a_failing_compile_warns_once_and_runs_eager(counter):
    calls = []

    def broken(gm, example_inputs):
        calls.append(1)
        raise RuntimeError('no compiler here')

    eager, compiled = heads(counter)
    compiled.dense_compiler = Compiler(check_compile_cfg(dict(backend=broken)))
    with pytest.warns(UserWarning, match='compiling dense_losses failed.*running it eager'):
        assert_same_training(eager, compiled, samples((3, 5)))
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert_same_training(eager, compiled, samples((2, 2)))
    assert compiled.dense_compiler.failed and len(calls) == 1


def test_errors_of_the_code_itself_are_raised_not_blamed_on_the_compiler(counter):
    compiler = Compiler(check_compile_cfg(dict(backend=counter.backend)))

    def bad_input(x):
        if x.shape[0] > 2:
            raise ValueError('x must have at most 2 rows')
        return x * 2

    with warnings.catch_warnings():
        warnings.simplefilter('error')
        with pytest.raises(ValueError, match='at most 2 rows'):
            compiler(bad_input, torch.ones(3))
    assert not compiler.failed
    assert torch.equal(compiler(bad_input, torch.ones(2)), torch.full((2,), 2.0))


def test_compile_cfg_is_checked_at_build_time():
    build = build_pair  # both heads are built; ours checks its own arguments
    for cfg, field in ((dict(mode='fastest'), 'compile_cfg.mode'),
                       (dict(fullgraph=True, cache=1), 'compile_cfg keys'),
                       ('inductor', 'compile_cfg must be None or a dict')):
        with pytest.raises(RetinaConfigError, match=field):
            build('RetinaIoUAssigner', ours_only=dict(compile_cfg=cfg))
    for value in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match='static_num_gts must be None or an int >= 1'):
            build('RetinaIoUAssigner', ours_only=dict(static_num_gts=value))
    head = build('RetinaIoUAssigner', ours_only=dict(compile_cfg=dict(mode='reduce-overhead')))[1]
    assert head.dense_compiler.cfg == (('dynamic', False), ('fullgraph', True),
                                       ('mode', 'reduce-overhead'))
    assert build('RetinaIoUAssigner')[1].dense_compiler is None  # eager by default


def test_pad_gts_to_a_static_count():
    anchors = torch.zeros(1, 4)
    gts = [random_gts(n, m['img_shape'], seed=n) for n, m in zip((3, 0), METAS)]
    padded = pad_gts(gts, METAS, None, anchors, min_count=6)
    assert padded.bboxes.shape == (2, 6, 4) and padded.labels.shape == (2, 6)
    assert padded.valid.tolist() == [[True] * 3 + [False] * 3, [False] * 6]
    assert torch.equal(padded.bboxes[0, :3], gts[0].bboxes)
    assert not padded.bboxes[:, 3:].any() and not padded.bboxes[1].any()
    assert pad_gts(gts, METAS, None, anchors, min_count=2).bboxes.shape == (2, 3, 4)
    empty = pad_gts([random_gts(0, m['img_shape'], 0) for m in METAS], METAS, None, anchors, 4)
    assert empty.bboxes.shape == (2, 4, 4) and not empty.valid.any()


def test_inductor_compiles_both_regions_whole_and_equals_eager(counter):
    """The default backend, as users get it (C++ kernels on the CPU, Triton on a GPU): both
    regions compile without a fallback warning and give eager's numbers (~1 min on 2 cores)."""
    eager, compiled = heads(counter)
    compiled.dense_compiler = Compiler(check_compile_cfg({}))
    with warnings.catch_warnings():
        warnings.simplefilter('error', UserWarning)
        for counts, seed in (((3, 5), 0), ((2, 1), 4)):
            assert_same_training(eager, compiled, samples(counts, seed))
        compiled.load_state_dict(scoring(eager).state_dict())
        with torch.no_grad():
            got = compiled.eval().predict(FEATS, samples((0, 0)), rescale=True)
            expected = eager.predict(FEATS, samples((0, 0)), rescale=True)
    assert not compiled.dense_compiler.failed
    assert all(len(r) == 100 for r in expected)  # max_per_img: post-processing has work
    for g, e in zip(got, expected):
        torch.testing.assert_close(g.bboxes, e.bboxes)
        torch.testing.assert_close(g.scores, e.scores)
        assert torch.equal(g.labels, e.labels)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='CUDA graphs need a GPU')
def test_on_a_gpu_cuda_graphs_replay_the_compiled_head(counter):
    """``mode='reduce-overhead'`` (inductor's Triton kernels replayed as CUDA graphs): training
    steps and predictions equal eager's, and no region is left out of the graphs."""
    from torch._dynamo.utils import counters

    eager, compiled = heads(counter)
    eager.cuda()
    compiled.cuda().dense_compiler = Compiler(check_compile_cfg(dict(mode='reduce-overhead')))
    feats = tuple(f.cuda() for f in FEATS)

    def on_gpu(data_samples):
        for sample in data_samples:
            sample.gt_instances = sample.gt_instances.cuda()
        return data_samples

    def step(head, data_samples):
        leaves = [f.clone().requires_grad_() for f in feats]
        losses = head.loss(leaves, data_samples)
        head.zero_grad()
        sum(sum(v) for v in losses.values()).backward()
        values = torch.stack([torch.stack(v) for v in losses.values()]).detach().clone()
        return values, [f.grad for f in leaves] + [p.grad.clone() for p in head.parameters()]

    counters.clear()
    for counts, seed in (((3, 5), 0), ((2, 1), 4), ((6, 0), 2)):
        expected, expected_grads = step(eager, on_gpu(samples(counts, seed)))
        got, grads = step(compiled, on_gpu(samples(counts, seed)))
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
        for g, e in zip(grads, expected_grads):
            torch.testing.assert_close(g, e, rtol=1e-3, atol=1e-5)
    compiled.load_state_dict(scoring(eager).state_dict())
    with torch.no_grad():
        expected = eager.predict(feats, samples((0, 0)), rescale=True)
        for _ in range(3):
            got = compiled.eval().predict(feats, samples((0, 0)), rescale=True)
    assert not compiled.dense_compiler.failed  # no fallback to eager
    assert counters['inductor']['cudagraph_skips'] == 0
    for g, e in zip(got, expected):
        assert len(g) == len(e) > 0
        torch.testing.assert_close(g.scores, e.scores, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(g.bboxes, e.bboxes, rtol=1e-4, atol=1e-3)
