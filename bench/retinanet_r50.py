"""mmdet's ``retinanet_r50_fpn_1x_coco`` detector, stock or with the plugin's modules.

The side-by-side benchmarks and the parity tests (``tests/models/test_parity_retinanet.py``)
build both detectors from :func:`retinanet_r50_model_cfg`, so the two always compare the same
architecture.
"""
import copy
import math
import os

import torch
from mmengine.config import Config, ConfigDict


def retinanet_r50_model_cfg(ours: bool) -> ConfigDict:
    """mmdet's ``retinanet_r50_fpn_1x_coco`` model config, optionally with our four modules.

    Our modules are swapped in at the parity settings: P6 from C5, no ReLU before P7, L1 box
    loss. The backbone's pretrained ``init_cfg`` is removed (nothing is downloaded).

    Args:
        ours (bool): swap in ``RetinaFPN``, ``RetinaNetHead``, ``RetinaFocalLoss`` and
            ``RetinaIoUAssigner``; otherwise mmdet's stock model.

    Returns:
        ConfigDict: the ``model`` config.
    """
    import mmdet
    path = os.path.join(os.path.dirname(mmdet.__file__), '.mim', 'configs', 'retinanet',
                        'retinanet_r50_fpn_1x_coco.py')
    cfg = copy.deepcopy(Config.fromfile(path).model)
    cfg.backbone.init_cfg = None
    if ours:
        cfg.neck = dict(type='RetinaFPN', in_channels=[256, 512, 1024, 2048], out_channels=256,
                        start_level=1, num_outs=5, p6_source='input', relu_before_p7=False)
        cfg.bbox_head.type = 'RetinaNetHead'
        cfg.bbox_head.loss_cls.type = 'RetinaFocalLoss'
        cfg.bbox_head.loss_bbox = dict(type='L1Loss', loss_weight=1.0)
        cfg.train_cfg.assigner.type = 'RetinaIoUAssigner'
    return cfg


def spread_scores(head: torch.nn.Module) -> None:
    """Spreads a RetinaNet head's class scores over (0, 1), ~10 % above ``score_thr``: random
    weights otherwise score every anchor near the prior 0.01, below the threshold, and
    post-processing would have nothing to do."""
    with torch.no_grad():
        head.retina_cls.weight.mul_(1000.0)
        head.retina_cls.bias.fill_(math.log(0.1 / 0.9))
