"""RetinaPreciseBNHook / update_bn_stats: statistics against hand-computed batch averages, and a
training run that must stay bit-identical to one without the hook."""
import copy
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from mmdet.registry import MODELS
from mmengine.config import Config
from mmengine.model import BaseModel
from mmengine.registry import init_default_scope
from mmengine.runner import Runner
from torch import nn

import mmdet_retina_plugin  # noqa: F401
from mmdet_retina_plugin.engine.hooks import RetinaPreciseBNHook
from mmdet_retina_plugin.engine.hooks.precise_bn_hook import sample_batches, update_bn_stats
from mmdet_retina_plugin.models.layers import RetinaFrozenBN

DEMO_CONFIG = Path(__file__).parents[2] / 'configs' / 'demo' / 'retinanet_shapes.py'


class ToyModel(BaseModel):
    """Linear -> BN -> ReLU -> Linear, plus a BN that ``train()`` keeps frozen (like mmdet's
    ``norm_eval``)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(3, 4)
        self.bn = nn.BatchNorm1d(4)
        self.frozen_bn = nn.BatchNorm1d(4)
        self.out = nn.Linear(4, 1)

    def train(self, mode: bool = True) -> 'ToyModel':
        super().train(mode)
        self.frozen_bn.eval()
        return self

    def features(self, inputs) -> torch.Tensor:
        return self.fc(torch.stack(inputs)[:, :3])

    def forward(self, inputs, data_samples=None, mode='tensor'):
        h = self.features(inputs)
        y = self.out(torch.relu(self.bn(h) + self.frozen_bn(h))).squeeze(1)
        if mode == 'loss':
            return dict(loss=((y - torch.stack(inputs)[:, 3]) ** 2).mean())
        return y


class NoisyDataset(torch.utils.data.Dataset):
    """Samples (x1, x2, x3, target) whose x3 is drawn from NumPy's global random state on every
    access, like mmdet's augmentations: a pass over extra batches would shift every later draw."""

    def __init__(self, n: int = 12) -> None:
        rng = np.random.RandomState(1)
        self.base = rng.randn(n, 4).astype(np.float32)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, idx):
        sample = self.base[idx].copy()
        sample[2] += np.random.randn()
        return dict(inputs=torch.from_numpy(sample))


def batches_of(samples, size):
    return [dict(inputs=list(samples[i:i + size]), data_samples=None)
            for i in range(0, len(samples), size)]


def test_statistics_are_the_average_of_the_per_batch_statistics():
    model = ToyModel()
    gen = torch.Generator().manual_seed(3)
    data = batches_of(list(torch.randn(15, 4, generator=gen)), 5)
    before = copy.deepcopy(model.state_dict())
    model.bn.num_batches_tracked.fill_(7)

    assert update_bn_stats(model, iter(data), num_iters=3) == 1

    with torch.no_grad():
        feats = [model.features(b['inputs']) for b in data]
    expected_mean = torch.stack([f.mean(0) for f in feats]).mean(0)
    expected_var = torch.stack([f.var(0, unbiased=True) for f in feats]).mean(0)
    torch.testing.assert_close(model.bn.running_mean, expected_mean)
    torch.testing.assert_close(model.bn.running_var, expected_var)
    # Everything else as it was: weights, the frozen BN, the counter, momentum, mode.
    after = model.state_dict()
    for key, value in before.items():
        if key not in ('bn.running_mean', 'bn.running_var', 'bn.num_batches_tracked'):
            assert torch.equal(after[key], value), key
    assert model.bn.num_batches_tracked.item() == 7
    assert model.bn.momentum == 0.1 and model.training


def test_only_num_iters_batches_are_used_and_eval_mode_is_restored():
    model = ToyModel().eval()
    gen = torch.Generator().manual_seed(4)
    data = batches_of(list(torch.randn(20, 4, generator=gen)), 5)
    update_bn_stats(model, iter(data), num_iters=2)
    with torch.no_grad():
        feats = [model.features(b['inputs']) for b in data[:2]]
    torch.testing.assert_close(model.bn.running_mean,
                               torch.stack([f.mean(0) for f in feats]).mean(0))
    assert not model.training and not model.bn.training


def test_too_few_batches_raise_and_leave_the_statistics_alone():
    model = ToyModel()
    data = batches_of(list(torch.randn(10, 4)), 5)
    mean, var = model.bn.running_mean.clone(), model.bn.running_var.clone()
    with pytest.raises(ValueError, match='fewer than num_iters=3'):
        update_bn_stats(model, iter(data), num_iters=3)
    assert torch.equal(model.bn.running_mean, mean) and torch.equal(model.bn.running_var, var)
    assert model.bn.momentum == 0.1
    with pytest.raises(ValueError, match='num_iters must be >= 1'):
        update_bn_stats(model, iter(data), num_iters=0)


def test_model_without_training_bn_is_left_alone():
    model = ToyModel()
    model.bn = nn.Identity()
    assert update_bn_stats(model, iter(batches_of(list(torch.randn(5, 4)), 5)), 1) == 0


def test_frozen_norms_keep_their_statistics_in_training_mode():
    """A RetinaFrozenBN is a batch norm by class, yet frozen in any mode: not updated, not
    counted, even where nothing puts it in eval mode."""
    model = ToyModel()
    model.bn = RetinaFrozenBN(4)
    with torch.no_grad():
        model.bn.running_mean.fill_(0.5)
    assert model.bn.training
    assert update_bn_stats(model, iter(batches_of(list(torch.randn(5, 4)), 5)), 1) == 0
    assert torch.equal(model.bn.running_mean, torch.full((4,), 0.5))


@pytest.mark.parametrize('kwargs, field', [(dict(num_iters=0), 'num_iters'),
                                           (dict(num_iters=2.5), 'num_iters'),
                                           (dict(interval=0), 'interval')])
def test_bad_arguments_raise_at_build(kwargs, field):
    with pytest.raises(ValueError, match=field):
        RetinaPreciseBNHook(**kwargs)


def train_toy(tmp_path, hooks, train_cfg):
    np.random.seed(0)
    runner = Runner(
        model=ToyModel(), work_dir=str(tmp_path),
        train_dataloader=dict(dataset=NoisyDataset(), batch_size=4, num_workers=0,
                              sampler=dict(type='DefaultSampler', shuffle=True, seed=0),
                              collate_fn=dict(type='pseudo_collate')),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.05)),
        train_cfg=train_cfg, custom_hooks=hooks,
        default_hooks=dict(checkpoint=None, logger=dict(type='LoggerHook', interval=1)),
        randomness=dict(seed=0), default_scope='mmdet',
        experiment_name=f'toy_{len(hooks)}_{tmp_path.name}')
    runner.train()
    return runner


def test_training_is_unchanged_and_final_statistics_match_an_offline_pass(tmp_path):
    train_cfg = dict(by_epoch=True, max_epochs=3)
    plain = train_toy(tmp_path / 'plain', [], train_cfg)
    hooked = train_toy(tmp_path / 'hooked', [dict(type='RetinaPreciseBNHook', num_iters=4,
                                                  interval=1, seed=5)], train_cfg)
    plain_sd, hooked_sd = plain.model.state_dict(), hooked.model.state_dict()
    # Extra passes after epochs 1 and 2 drew augmentations from the global NumPy state; the
    # hook restores it, so the weights and the batches of epochs 2 and 3 are the same.
    for key, value in plain_sd.items():
        if key not in ('bn.running_mean', 'bn.running_var'):
            assert torch.equal(hooked_sd[key], value), key
    assert not torch.equal(hooked_sd['bn.running_mean'], plain_sd['bn.running_mean'])
    # The hook's last pass equals the documented procedure run on the plain run's final model:
    # the global random states are now where that pass found them (the hook restored them),
    # so the extra batches draw the same noise.
    update_bn_stats(plain.model, sample_batches(plain.train_dataloader, seed=5), num_iters=4)
    assert torch.equal(plain.model.bn.running_mean, hooked.model.bn.running_mean)
    assert torch.equal(plain.model.bn.running_var, hooked.model.bn.running_var)


@pytest.mark.parametrize('train_cfg, hook, expected', [
    (dict(by_epoch=False, max_iters=5), dict(interval=2, by_epoch=False), [2, 4, 5]),
    (dict(by_epoch=True, max_epochs=3), dict(interval=2), [6, 9]),   # 3 iterations per epoch
    (dict(by_epoch=True, max_epochs=3), dict(interval=10), [9]),
])
def test_runs_every_interval_and_after_the_last_step(tmp_path, monkeypatch, train_cfg, hook,
                                                      expected):
    calls = []
    real = RetinaPreciseBNHook._update

    def spy(self, runner):
        calls.append(runner.iter)
        real(self, runner)

    monkeypatch.setattr(RetinaPreciseBNHook, '_update', spy)
    train_toy(tmp_path, [dict(type='RetinaPreciseBNHook', num_iters=2, **hook)], train_cfg)
    # runner.iter counts finished iterations once the step's hooks have run, except inside
    # after_train_iter where it still is the step's index.
    offset = 0 if train_cfg['by_epoch'] else -1
    assert calls == [e + offset for e in expected]


def test_demo_detector_statistics_match_its_stem_outputs():
    """On the demo's RetinaNet (mmdet ResNet, our head): the stem BN gets the average batch mean
    of the stem conv's output, computed here by hand."""
    init_default_scope('mmdet')
    cfg = Config.fromfile(str(DEMO_CONFIG))
    model = MODELS.build(cfg.model)
    gen = torch.Generator().manual_seed(0)
    batches = [dict(inputs=[torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8,
                                          generator=gen) for _ in range(2)],
                    data_samples=None) for _ in range(3)]
    count = update_bn_stats(model, iter(batches), num_iters=3)
    assert count == sum(isinstance(m, nn.BatchNorm2d) for m in model.backbone.modules())
    with torch.no_grad():
        means = [model.backbone.conv1(model.data_preprocessor(b, False)['inputs']).mean((0, 2, 3))
                 for b in batches]
    torch.testing.assert_close(model.backbone.bn1.running_mean, torch.stack(means).mean(0),
                               rtol=1e-5, atol=1e-5)


def test_sample_batches_splits_each_pass_between_ranks():
    """Every rank draws the same seeded order and takes its own stride of it; one process gets
    the whole order, as RandomSampler draws it."""
    loader = torch.utils.data.DataLoader(list(range(10)), batch_size=2)
    one = list(itertools.islice(sample_batches(loader, seed=3), 10))  # two passes
    order = torch.cat(one).tolist()
    gen = torch.Generator().manual_seed(3)
    assert order == list(torch.utils.data.RandomSampler(range(10), generator=gen)) + \
        list(torch.utils.data.RandomSampler(range(10), generator=gen))
    shards = [torch.cat(list(itertools.islice(sample_batches(loader, 3, rank, 2), 3))).tolist()
              for rank in (0, 1)]
    assert shards == [order[0:10:2], order[1:10:2]]  # one pass: disjoint, together all of it
    for rank, world_size, field in [(2, 2, 'rank'), (0, 0, 'world_size'),
                                    (0, 11, 'training set')]:
        with pytest.raises(ValueError, match=field):
            next(sample_batches(loader, 0, rank, world_size))
