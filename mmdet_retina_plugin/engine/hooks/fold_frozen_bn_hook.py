"""Folds the model's frozen norms into the convolutions before them when testing starts
(:func:`~mmdet_retina_plugin.models.layers.fold_frozen_bn`): fewer launches and feature-map
passes per image at inference, the detections equal to float rounding."""
from __future__ import annotations

import logging

from mmdet.registry import HOOKS
from mmengine.hooks import EMAHook, Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.runner import Runner

from ...models.layers.frozen_bn_folding import fold_frozen_bn


@HOOKS.register_module()
class RetinaFoldFrozenBNHook(Hook):
    """Folds ``RetinaFrozenBN`` layers into their convolutions at ``before_test``.

    Only for testing (``tools/test.py``, ``mim test``, ``Runner.test``): the runner has loaded
    the checkpoint by then, and nothing trains or saves the model afterwards. Validation during
    training keeps the norms, since the weights go on training. Runs after
    ``RetinaChannelsLastHook`` (the folded weights keep its layout) and before
    ``RetinaCompileHook`` (which then compiles the folded network). With an ``EMAHook`` (or a
    subclass) it folds nothing and says so: that hook swaps the averaged weights in and out
    parameter by parameter, in order, which the fold would misalign.
    """

    priority = 'HIGH'

    def before_test(self, runner: Runner) -> None:
        if any(isinstance(hook, EMAHook) for hook in getattr(runner, 'hooks', ())):
            print_log('RetinaFoldFrozenBNHook: nothing folded, since EMAHook swaps the '
                      "averaged weights in by the parameters' order", logger='current',
                      level=logging.WARNING)
            return
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        folded = fold_frozen_bn(model)
        print_log(f'RetinaFoldFrozenBNHook: {folded} frozen norms folded into their '
                  'convolutions for testing', logger='current')
