"""The user's command, ``mim train mmdet CONFIG --launcher pytorch --gpus 2``, on a CPU-only host.

mim starts two processes of mmdet's ``tools/train.py`` under ``torch.distributed.launch``. The
config keeps mmdet's default ``dist_cfg=dict(backend='nccl')`` and sets no ``model_wrapper_cfg``:
``import mmdet_retina_plugin`` (through ``custom_imports``) must make mmengine fall back to gloo
and to a DDP without ``device_ids`` by itself (:mod:`mmdet_retina_plugin.engine.cpu_distributed`).
Both ranks must finish 4 iterations with bit-identical parameters, equal to rank 0's checkpoint.
"""
import os
import os.path as osp
import signal
import socket
import subprocess
from types import SimpleNamespace

import pytest
import torch
from rel_helpers import HERE, PYTHON, child_env, state_dicts_equal, tail
from rel_tiny_cfg import tiny_cfg

import mmdet_retina_plugin  # noqa: F401  (weights-only torch.load of mmengine checkpoints)

MAX_ITERS = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_mim_train_pytorch_launcher_two_cpu_processes(shapes_root, tmp_path):
    work, log = str(tmp_path / 'work'), str(tmp_path / 'mim_train.log')
    cfg = tiny_cfg(shapes_root, work, max_iters=MAX_ITERS, ckpt_interval=MAX_ITERS)
    # What a user's config carries: mmdet's default_runtime backend, no CPU-specific settings.
    cfg.env_cfg.dist_cfg = dict(backend='nccl')
    cfg.pop('model_wrapper_cfg', None)
    cfg.custom_imports = dict(imports=['mmdet_retina_plugin', 'rel_dump_params_hook'],
                              allow_failed_imports=False)
    cfg.custom_hooks = [*cfg.custom_hooks, dict(type='RelDumpParamsHook')]
    cfg_path = str(tmp_path / 'tiny_dist_cfg.py')
    cfg.dump(cfg_path)

    env = child_env()
    env['CUDA_VISIBLE_DEVICES'] = ''  # a GPU host runs the CPU-only path too
    # rel_dump_params_hook is imported by name in the training processes
    env['PYTHONPATH'] = os.pathsep.join(p for p in (HERE, env.get('PYTHONPATH')) if p)
    cmd = [PYTHON, '-m', 'mim', 'train', 'mmdet', cfg_path, '--launcher', 'pytorch',
           '--gpus', '2', '--port', str(free_port()), '--work-dir', work]
    with open(log, 'w') as f:
        # own session: on timeout the launcher and both ranks are killed together
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env,
                                cwd=str(tmp_path), start_new_session=True)
        try:
            rc = proc.wait(timeout=180)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            pytest.fail(f'mim train timed out; log tail:\n{tail(log)}')
    assert rc == 0, tail(log, 60)

    with open(log) as f:
        text = f.read()
    assert 'Distributed training: True' in text and 'GPU number: 2' in text  # world size 2
    assert "initialising the process group with 'gloo'" in text
    assert f'Iter(train) [{MAX_ITERS}/{MAX_ITERS}]' in text

    ranks = [torch.load(osp.join(work, f'final_rank{r}.pth'), map_location='cpu')
             for r in (0, 1)]
    for r, dump in enumerate(ranks):
        assert (dump['rank'], dump['world_size'], dump['backend']) == (r, 2, 'gloo')
        assert dump['wrapper'] == 'RetinaDistributedDataParallel'
    r0, r1 = ranks[0]['params'], ranks[1]['params']
    assert state_dicts_equal(r0, r1) == []
    assert all(torch.isfinite(p).all() for p in r0.values())
    # rank 0 wrote the checkpoint of the last iteration; its weights are the ranks' weights
    ckpt = torch.load(osp.join(work, f'iter_{MAX_ITERS}.pth'), map_location='cpu')
    assert ckpt['meta']['iter'] == MAX_ITERS
    assert state_dicts_equal({k: ckpt['state_dict'][k] for k in r0}, r0) == []


def test_patches_only_act_without_accelerator(monkeypatch):
    """With CUDA (or another accelerator) mmengine's functions run unchanged; installing twice
    does not wrap twice."""
    import mmengine.dist.utils as dist_utils
    from mmengine.runner import Runner

    from mmdet_retina_plugin.engine import cpu_distributed

    before = dist_utils._init_dist_pytorch, Runner.wrap_model
    cpu_distributed.install_cpu_distributed()
    assert (dist_utils._init_dist_pytorch, Runner.wrap_model) == before
    assert dist_utils._init_dist_pytorch.__wrapped__.__module__ == 'mmengine.dist.utils'

    calls = []
    init = cpu_distributed._wrap_init_dist_pytorch(lambda *a, **k: calls.append(('orig', a, k)))
    monkeypatch.setattr(cpu_distributed.torch_dist, 'init_process_group',
                        lambda **k: calls.append(('pg', k)))
    monkeypatch.setattr(cpu_distributed, 'get_device', lambda: 'cuda')
    init('nccl', timeout=5)
    assert calls.pop() == ('orig', ('nccl',), dict(init_backend='torch', timeout=5))
    monkeypatch.setattr(cpu_distributed, 'get_device', lambda: 'cpu')
    monkeypatch.setattr(cpu_distributed, '_warned_backend', False)
    with pytest.warns(RuntimeWarning, match="'gloo'"):
        init('nccl', timeout=5)
    assert calls.pop() == ('pg', dict(backend='gloo', timeout=5))
    init('gloo')
    assert calls.pop() == ('pg', dict(backend='gloo'))
    init('nccl', init_backend='deepspeed')  # not ours to change
    assert calls.pop() == ('orig', ('nccl',), dict(init_backend='deepspeed'))

    # Runner.wrap_model: the default (model_wrapper_cfg=None) branch gets our CPU-safe wrapper
    wrap = cpu_distributed._wrap_runner_wrap_model(lambda self, wrapper_cfg, model: wrapper_cfg)
    runner = SimpleNamespace(distributed=True, cfg=dict(find_unused_parameters=True))
    model = torch.nn.Linear(1, 1)
    assert wrap(runner, None, model) == dict(type='RetinaDistributedDataParallel',
                                             broadcast_buffers=False, find_unused_parameters=True)
    assert wrap(runner, dict(type='X'), model) == dict(type='X')  # the config's choice wins
    monkeypatch.setattr(cpu_distributed, 'get_device', lambda: 'cuda')
    assert wrap(runner, None, model) is None  # mmengine's own MMDistributedDataParallel
