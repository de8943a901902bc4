"""`make bench`: runs every bench/bench_*.py (ours vs stock mmdet, side by side) in turn.

Each module exposes ``main()``, prints its table and writes ``bench/results/<name>.json``. Pass
module names to run a subset: ``python -m bench.run_all focal_loss assigner``.
"""
import importlib
import pkgutil
import sys
from pathlib import Path

import torch


def main(argv=None) -> None:
    modules = pkgutil.iter_modules([str(Path(__file__).parent)])
    names = sorted(m.name[len('bench_'):] for m in modules if m.name.startswith('bench_'))
    wanted = (argv if argv is not None else sys.argv[1:]) or names
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        raise SystemExit(f'unknown benchmark(s) {unknown}; available: {names}')
    threads = torch.get_num_threads()
    for name in wanted:
        # a benchmark may pin torch to fewer threads (the assigner's --threads): not the next one
        torch.set_num_threads(threads)
        # each benchmark parses its own options from sys.argv: give it none of ours
        sys.argv = [f'bench_{name}']
        importlib.import_module(f'bench.bench_{name}').main()


if __name__ == '__main__':
    main()
