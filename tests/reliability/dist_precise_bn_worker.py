"""torchrun worker for test_precise_bn_distributed: one RetinaPreciseBNHook pass per rank.

Writes ``OUT_DIR/rank{R}.json``: the sample ids of every batch the pass fed the model, the BN
statistics this rank computed by hand from those batches alone, and the BN buffers the hook
left (after its all-reduce over the ranks).
"""
import json
import os.path as osp
import sys
from types import SimpleNamespace

import torch
import torch.distributed as dist
from mmengine.dataset import pseudo_collate
from mmengine.logging import MMLogger
from mmengine.model import BaseModel
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mmdet_retina_plugin.engine.hooks import RetinaPreciseBNHook

NUM_SAMPLES, BATCH_SIZE, NUM_ITERS = 16, 2, 3


class IdDataset(Dataset):
    """Sample ``i``: its id followed by 3 fixed random features."""

    def __init__(self) -> None:
        self.features = torch.randn(NUM_SAMPLES, 3, generator=torch.Generator().manual_seed(1))

    def __len__(self) -> int:
        return NUM_SAMPLES

    def __getitem__(self, idx: int) -> dict:
        return dict(inputs=torch.cat([torch.tensor([float(idx)]), self.features[idx]]))


class RecordingModel(BaseModel):
    """Linear -> BN; records the ids of every batch and the features BN normalised."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)  # the same weights on every rank, as after DDP's broadcast
        self.fc = nn.Linear(3, 4)
        self.bn = nn.BatchNorm1d(4)
        self.seen, self.features = [], []

    def forward(self, inputs, data_samples=None, mode='tensor'):
        x = torch.stack(inputs)
        self.seen.append([int(i) for i in x[:, 0]])
        h = self.fc(x[:, 1:])
        self.features.append(h)
        return self.bn(h)


if __name__ == '__main__':
    dist.init_process_group('gloo')
    rank = dist.get_rank()
    model = RecordingModel()
    loader = DataLoader(IdDataset(), batch_size=BATCH_SIZE, collate_fn=pseudo_collate)
    runner = SimpleNamespace(model=model, train_dataloader=loader,
                             logger=MMLogger.get_instance(f'precise_bn_rank{rank}'))
    RetinaPreciseBNHook(num_iters=NUM_ITERS, seed=0)._update(runner)
    local_mean = torch.stack([h.mean(0) for h in model.features]).mean(0)
    local_var = torch.stack([h.var(0, unbiased=True) for h in model.features]).mean(0)
    with open(osp.join(sys.argv[1], f'rank{rank}.json'), 'w') as f:
        json.dump(dict(seen=model.seen, local_mean=local_mean.tolist(),
                       local_var=local_var.tolist(), running_mean=model.bn.running_mean.tolist(),
                       running_var=model.bn.running_var.tolist()), f)
    dist.destroy_process_group()
