"""The user's command, ``mim train mmdet CONFIG --launcher pytorch --gpus 2``, on a CPU-only host.

mim starts two processes of mmdet's ``tools/train.py`` under ``torch.distributed.launch``. The
config asks for CPU distributed training with the three documented keys
(:mod:`mmdet_retina_plugin.engine.cpu_distributed`): ``runner_type='RetinaCPUDistributedRunner'``,
``env_cfg.dist_cfg.backend='gloo'`` and ``model_wrapper_cfg`` of ``RetinaDistributedDataParallel``.
Both ranks must finish 4 iterations with bit-identical parameters, equal to rank 0's checkpoint.
A config that asks without usable settings stops with a ``ValueError`` naming the field.
"""
import datetime
import os
import os.path as osp
import signal
import socket
import subprocess

import pytest
import torch
from mmengine.runner import Runner
from rel_helpers import HERE, PYTHON, child_env, state_dicts_equal, tail
from tiny_detector import tiny_config

import mmdet_retina_plugin  # noqa: F401  (weights-only torch.load of mmengine checkpoints)
from mmdet_retina_plugin.engine import cpu_distributed
from mmdet_retina_plugin.engine.cpu_distributed import (
    RetinaCPUDistributedRunner,
    cpu_process_group_kwargs,
)

MAX_ITERS = 4
WRAPPER = dict(type='RetinaDistributedDataParallel', broadcast_buffers=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_mim_train_pytorch_launcher_two_cpu_processes(shapes_root, tmp_path):
    work, log = str(tmp_path / 'work'), str(tmp_path / 'mim_train.log')
    cfg = tiny_config(shapes_root, work, max_iters=MAX_ITERS, ckpt_interval=MAX_ITERS)
    # What docs/reliability.md tells a user to add for CPU-only hosts.
    cfg.runner_type = 'RetinaCPUDistributedRunner'
    cfg.env_cfg.dist_cfg = dict(backend='gloo', timeout=120)
    cfg.model_wrapper_cfg = dict(type='RetinaDistributedDataParallel', broadcast_buffers=False)
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
    assert "process group initialised with 'gloo'" in text
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


@pytest.mark.parametrize('launcher, dist_cfg, wrapper, field', [
    ('slurm', dict(backend='gloo'), WRAPPER, 'launcher'),
    ('pytorch', dict(backend='nccl'), WRAPPER, 'env_cfg.dist_cfg.backend'),
    ('pytorch', dict(), WRAPPER, 'env_cfg.dist_cfg.backend'),
    ('pytorch', dict(backend='gloo', init_backend='deepspeed'), WRAPPER,
     'env_cfg.dist_cfg.init_backend'),
    ('pytorch', dict(backend='gloo'), None, 'model_wrapper_cfg'),
    ('pytorch', dict(backend='gloo'), dict(type='MMDistributedDataParallel'), 'model_wrapper_cfg'),
    ('pytorch', dict(backend='gloo'), dict(broadcast_buffers=False), 'model_wrapper_cfg'),
])
def test_unusable_cpu_settings_name_the_field(launcher, dist_cfg, wrapper, field):
    with pytest.raises(ValueError, match=field.replace('.', r'\.')):
        cpu_process_group_kwargs(launcher, dist_cfg, wrapper)


def test_process_group_arguments():
    assert cpu_process_group_kwargs('pytorch', dict(backend='gloo', timeout=30), WRAPPER) == \
        dict(backend='gloo', timeout=datetime.timedelta(seconds=30))
    assert cpu_process_group_kwargs('pytorch', dict(backend='gloo'), WRAPPER) == \
        dict(backend='gloo')


def test_runner_with_an_accelerator_or_without_launcher_is_mmengines(monkeypatch):
    """The process group is ours only for a distributed run on a host without an accelerator;
    otherwise mmengine's setup_env does everything (here: not distributed, nothing to init)."""
    calls = []
    monkeypatch.setattr(cpu_distributed.torch_dist, 'init_process_group',
                        lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr(Runner, 'setup_env', lambda self, env_cfg: calls.append('mmengine'))
    runner = RetinaCPUDistributedRunner.__new__(RetinaCPUDistributedRunner)  # no __init__
    runner._distributed, runner._launcher = True, 'pytorch'
    runner.cfg = dict(model_wrapper_cfg=WRAPPER)
    env_cfg = dict(dist_cfg=dict(backend='gloo'))
    monkeypatch.setattr(cpu_distributed, 'get_device', lambda: 'cuda')
    runner.setup_env(env_cfg)
    assert calls == ['mmengine']
    monkeypatch.setattr(cpu_distributed, 'get_device', lambda: 'cpu')
    runner._distributed, runner._launcher = False, 'none'
    runner.setup_env(env_cfg)
    assert calls == ['mmengine', 'mmengine']
