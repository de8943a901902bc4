"""RetinaNet modules for MMDetection 3.x.

``import mmdet_retina_plugin`` registers every module in mmdet's registries (``MODELS``,
``TASK_UTILS``, ``HOOKS``) under names that do not clash with mmdet's own, and makes
mmengine checkpoints load under ``torch.load(weights_only=True)`` (see
:mod:`mmdet_retina_plugin.utils.safe_checkpoint`).
"""
from .version import __version__
from .utils.safe_checkpoint import allow_mmengine_checkpoint_globals
from . import models  # noqa: F401  (registers the modules)
from . import engine  # noqa: F401  (registers the hooks)
from . import datasets  # noqa: F401  (registers the transforms)

allow_mmengine_checkpoint_globals()

__all__ = ['__version__', 'allow_mmengine_checkpoint_globals']
