"""Suite-wide fixtures; puts ``tests/helpers`` on ``sys.path`` for the shared test helpers."""
import os.path as osp
import sys
from typing import Iterator

import pytest
import torch
from mmdet.utils import register_all_modules
from mmengine.registry import DefaultScope

# pytest runs with --import-mode=importlib, so test modules import the helpers by name.
sys.path.insert(0, osp.join(osp.dirname(osp.abspath(__file__)), 'helpers'))
register_all_modules(init_default_scope=False)


@pytest.fixture(autouse=True)
def mmdet_default_scope() -> Iterator[None]:
    """Every test starts in mmdet's registry scope and leaves the global scope as it found it.

    A Runner (or anything else) that creates a ``DefaultScope`` instance changes the scope every
    later ``MODELS.build`` resolves in; without this, a test's outcome would depend on which
    tests ran before it.
    """
    with DefaultScope.overwrite_default_scope('mmdet'):
        yield


@pytest.fixture(scope='module')
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread for a module of small tensor ops.

    On a shared, oversubscribed CPU, OpenMP spin-waiting makes 2 threads many times slower than
    1 for small convs and elementwise passes.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
