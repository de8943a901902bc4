"""RetinaNet modules for MMDetection 3.x.

``import mmdet_retina_plugin`` does two things and changes nothing else in mmengine, mmdet or
torch (``tests/test_import_side_effects.py``):

* registers every module in mmdet's and mmengine's registries (``MODELS``, ``TASK_UTILS``,
  ``HOOKS``, ``TRANSFORMS``, ``DATASETS``, ``MODEL_WRAPPERS``, ``RUNNERS``, the file backend
  ``retina_atomic_local``) under names that do not clash with theirs;
* adds the globals of mmengine checkpoints to torch's weights-only allow-list, so ``--resume``
  works under ``torch.load(weights_only=True)`` (:mod:`mmdet_retina_plugin.utils.safe_checkpoint`).

Opt-ins: CPU-only distributed training is asked for by a config
(:mod:`mmdet_retina_plugin.engine.cpu_distributed`); 'did you mean' hints for misspelled
``type`` names by ``MMDET_RETINA_REGISTRY_HINTS=1`` or ``with registry_hints():``
(:mod:`mmdet_retina_plugin.utils.registry_hint`).

Where torch is not installed at all (an install for running exported ONNX files only, with
numpy, onnxruntime and OpenCV: :mod:`mmdet_retina_plugin.deploy.runtime`) there is no registry
to fill, and the import does neither; a torch that is installed but fails to import still
raises.
"""
from .version import __version__

try:
    import torch  # noqa: F401  (what every registration below needs first)
except ModuleNotFoundError as missing:
    if missing.name != 'torch':
        raise
    __all__ = ['__version__']
else:
    from . import (
        datasets,  # noqa: F401  (registers the transforms)
        engine,  # noqa: F401  (registers the hooks, the runner and the model wrapper)
        models,  # noqa: F401  (registers the modules)
    )
    from .utils.registry_hint import install_registry_hints_if_asked, registry_hints
    from .utils.safe_checkpoint import allow_mmengine_checkpoint_globals

    allow_mmengine_checkpoint_globals()
    install_registry_hints_if_asked()

    __all__ = ['__version__', 'allow_mmengine_checkpoint_globals', 'registry_hints']
