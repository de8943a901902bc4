"""RetinaNonFiniteGuardHook on a one-layer model, compared with a hand-written SGD loop."""
import math
import os.path as osp
import warnings

import pytest
import torch
from mmengine.model import BaseModel
from mmengine.runner import Runner
from torch import nn

import mmdet_retina_plugin  # noqa: F401
from mmdet_retina_plugin.engine.hooks import RetinaNonFiniteGuardHook

NAN = float('nan')
# (x1, x2, y, grad_bomb): grad_bomb adds sqrt(0 * w) to the loss, which is 0 but has a NaN
# gradient, so the loss stays finite and only the gradient check can catch it.
DATA = [(1., 2., 3., 0.), (0.5, -1., 0., 0.), (NAN, 1., 1., 0.), (2., 1., -1., 0.),
        (1., 1., 1., 1.), (-1., 0.5, 2., 0.)]


class ToyModel(BaseModel):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 1)
        with torch.no_grad():
            self.linear.weight.copy_(torch.tensor([[0.3, -0.2]]))
            self.linear.bias.fill_(0.1)

    def forward(self, inputs, data_samples=None, mode='loss'):
        x = torch.stack(inputs)
        loss = ((self.linear(x[:, :2]).squeeze(1) - x[:, 2]) ** 2).mean()
        if x[:, 3].any():
            loss = loss + torch.sqrt(self.linear.weight.sum() * 0)
        return dict(loss=loss)


def reference(steps) -> ToyModel:
    """Plain SGD over DATA[:steps], skipping samples whose loss or gradient is not finite."""
    model = ToyModel()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for sample in DATA[:steps]:
        opt.zero_grad()
        loss = model([torch.tensor(sample)])['loss']
        if not math.isfinite(loss.item()):
            continue
        loss.backward()
        if all(torch.isfinite(p.grad).all() for p in model.parameters()):
            opt.step()
    return model


def make_runner(tmp_path, hook, data=DATA, iters=len(DATA), **kwargs) -> Runner:
    return Runner(
        model=ToyModel(), work_dir=str(tmp_path),
        train_dataloader=dict(dataset=[dict(inputs=torch.tensor(s)) for s in data],
                              sampler=dict(type='DefaultSampler', shuffle=False),
                              collate_fn=dict(type='pseudo_collate'), batch_size=1,
                              num_workers=0),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1)),
        train_cfg=dict(by_epoch=False, max_iters=iters), custom_hooks=[hook],
        default_hooks=dict(checkpoint=None, logger=dict(type='LoggerHook', interval=1)),
        default_scope='mmdet', **kwargs)


def params(model):
    return [p.detach().clone() for p in model.parameters()]


def test_skip_matches_reference_loop(tmp_path):
    hook = RetinaNonFiniteGuardHook(action='skip')
    runner = make_runner(tmp_path, hook)
    runner.train()
    assert hook.skipped_iters == [3, 5]  # NaN input (loss) and grad bomb (gradient)
    for ours, ref in zip(params(runner.model), params(reference(len(DATA)))):
        assert torch.allclose(ours, ref, rtol=0, atol=1e-7)
        assert torch.isfinite(ours).all()
    assert 'update_params' not in runner.optim_wrapper.__dict__  # unwrapped after training


def test_without_hook_weights_become_nan(tmp_path):
    runner = make_runner(tmp_path / 'nohook', RetinaNonFiniteGuardHook(), iters=3)
    runner._hooks = [h for h in runner._hooks if not isinstance(h, RetinaNonFiniteGuardHook)]
    runner.train()
    assert not torch.isfinite(runner.model.linear.weight).all()  # what the hook prevents


def test_raise_stops_before_the_update(tmp_path):
    runner = make_runner(tmp_path, RetinaNonFiniteGuardHook(action='raise'))
    with pytest.raises(FloatingPointError,
                       match=r'Non-finite loss=nan at iter 3.*batch: unknown batch'):
        runner.train()
    for ours, ref in zip(params(runner.model), params(reference(2))):
        assert torch.allclose(ours, ref, rtol=0, atol=1e-7)


def test_max_consecutive_skips(tmp_path):
    data = [(NAN, 0., 0., 0.)] * 4
    hook = RetinaNonFiniteGuardHook(action='skip', max_consecutive_skips=2)
    with pytest.raises(FloatingPointError, match='max_consecutive_skips=2'):
        make_runner(tmp_path, hook, data=data, iters=4).train()
    assert hook.skipped_iters == [1, 2]


def test_refuses_to_save_non_finite_checkpoint(tmp_path):
    runner = make_runner(tmp_path, RetinaNonFiniteGuardHook(), iters=1)
    runner.train()
    runner.save_checkpoint(str(tmp_path), 'good.pth')
    with torch.no_grad():
        runner.model.linear.bias.fill_(float('inf'))
    with pytest.raises(FloatingPointError, match=r'linear\.bias'):
        runner.save_checkpoint(str(tmp_path), 'bad.pth')
    assert not osp.exists(tmp_path / 'bad.pth') and osp.exists(tmp_path / 'good.pth')


@pytest.mark.parametrize('kwargs', [dict(action='ignore'), dict(max_consecutive_skips=0),
                                    dict(max_consecutive_skips=1.5)])
def test_invalid_args(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        RetinaNonFiniteGuardHook(**kwargs)


def test_guard_keeps_the_parameter_scheduler_wrapper(tmp_path):
    """mmengine's schedulers wrap ``OptimWrapper.step`` with a counter and warn when something
    replaces it; the guard wraps that wrapper and puts it back after training."""
    hook = RetinaNonFiniteGuardHook(action='skip')
    runner = make_runner(tmp_path, hook, data=DATA[:2], iters=2,
                         param_scheduler=dict(type='ConstantLR', factor=0.5, by_epoch=False))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        runner.train()
    assert not [w for w in caught if 'has been overridden' in str(w.message)]
    step = runner.optim_wrapper.__dict__['step']  # the scheduler's counter, restored
    assert getattr(step, '_with_counter', False)
