"""RetinaNet modules for MMDetection 3.x.

``import mmdet_retina_plugin`` registers every module in mmdet's registries (``MODELS``,
``TASK_UTILS``, ``HOOKS``) under names that do not clash with mmdet's own, and makes
mmengine checkpoints load under ``torch.load(weights_only=True)`` (see
:mod:`mmdet_retina_plugin.utils.safe_checkpoint`). A misspelled ``type`` in a config gets
mmengine's error plus the close matches among registered names
(:mod:`mmdet_retina_plugin.utils.registry_hint`).
"""
from . import (
    datasets,  # noqa: F401  (registers the transforms)
    engine,  # noqa: F401  (registers the hooks)
    models,  # noqa: F401  (registers the modules)
)
from .utils.registry_hint import install_registry_hints
from .utils.safe_checkpoint import allow_mmengine_checkpoint_globals
from .version import __version__

allow_mmengine_checkpoint_globals()
install_registry_hints()

__all__ = ['__version__', 'allow_mmengine_checkpoint_globals', 'install_registry_hints']
