"""torchrun worker for test_dist_utils: prints ``rank result input`` for reduce_mean_avg_factor."""
import sys

import torch
import torch.distributed as dist

from mmdet_retina_plugin.utils.dist_utils import reduce_mean_avg_factor

if __name__ == '__main__':
    dist.init_process_group('gloo')
    rank = dist.get_rank()
    for value in sys.argv[1:]:  # one value per rank, per case: 'v0,v1'
        x = torch.tensor(float(value.split(',')[rank]))
        print(f'RESULT {rank} {reduce_mean_avg_factor(x).item()} {x.item()}', flush=True)
    dist.destroy_process_group()
