"""Model-zoo sweep: our four modules swapped into every config that mmdet ships.

For each config under mmdet's ``.mim/configs`` (``_base_`` files skipped) whose ``model`` uses
``FPN``, ``FocalLoss``, ``MaxIoUAssigner`` or ``RetinaHead`` anywhere (nested heads, RPN/RoI
heads, ``train_cfg`` assigners; scoped spellings such as ``'mmdet.FPN'`` keep their scope), the
sweep swaps only the type names, each type alone and all four together, builds mmdet's detector
("stock") and ours and checks:

* the state_dict keys, shapes and dtypes are identical;
* our modules are live: the built detector holds as many instances of our class as stock holds
  of mmdet's (counted over modules and their plain attributes, e.g. a head's ``assigner``);
* every ``MaxIoUAssigner`` dict of the model is built through ``TASK_UTILS`` on both sides and
  both assign the same seeded random boxes identically (indices, labels, overlaps);
* every ``FocalLoss`` dict of the model is built on both sides and both give the same loss and
  gradient on seeded random logits and labels (class indices and one-hot targets).

For one config per config folder ("family"), the detector with all four swapped also runs one
training step against stock: stock is built on the CPU and initialised (``Pretrained`` init_cfgs
neutralised on both sides), ours loads stock's state_dict with ``strict=True`` (and a distillation
teacher's, which mmdet keeps out of the state_dict), both get the same seeded batch of two random
images (larger ones when stock's step finds them too small for the model) with random boxes,
masks and semantic maps, and the same RNG state before their step. Criteria: the same loss
names, each loss within 1e-4 relative (plus 1e-7 absolute for exact zeros); the same
parameters receive gradients, and for each parameter tensor
``|g_ours - g_stock|_2 <= 1e-3 * max(|g_stock|_2, 1e-3 * |G_stock|_2)`` with ``G`` all of
stock's gradients together. When ours differs, stock's step is run again: if stock does not
reproduce itself the family is listed as "stock non-deterministic" instead of as a failure.

Models are built without ``init_weights`` on PyTorch's meta device (parameters without storage;
CPU when a module needs real values while it is built). Configs whose model dicts are equal
after neutralising ``Pretrained`` init_cfgs are checked once and the result is counted for each
of them. Configs stock cannot load or build here (an optional package missing, a file missing in
mmdet's package, a download) are counted and listed with the reason.

The modules: ``zoo_configs`` (which configs, their model dicts, the swap), ``builds`` (stock and
ours built and compared), ``step`` (the training step) and ``sweep`` (the run, the report and
the command line). Run ``python -m mmdet_retina_plugin.tools.zoo_sweep --help``; ``make dropin``
runs every config and writes ``work_dirs/dropin/report.json`` and ``report.md``; the test suite
(``tests/dropin``) checks one config of each of 12 families.
"""

from .builds import (
    build_model,
    check_builds,
    compare_assigner,
    compare_loss,
    compare_signatures,
    live_classes,
    setup_registries,
    state_signature,
)
from .step import check_step, compare_steps, make_batch, run_step
from .sweep import main, markdown, run_sweep, summarize
from .zoo_configs import (
    SWAP_SETS,
    SWAPS,
    config_root,
    count_types,
    discover,
    family,
    inline_teachers,
    load_config,
    load_model_cfg,
    may_use_types,
    neutralise_downloads,
    swap_types,
)

__all__ = [
    'SWAPS', 'SWAP_SETS', 'build_model', 'check_builds', 'check_step', 'compare_assigner',
    'compare_loss', 'compare_signatures', 'compare_steps', 'config_root', 'count_types',
    'discover', 'family', 'inline_teachers', 'live_classes', 'load_config', 'load_model_cfg',
    'main', 'make_batch', 'markdown', 'may_use_types', 'neutralise_downloads', 'run_step',
    'run_sweep', 'setup_registries', 'state_signature', 'summarize', 'swap_types',
]
