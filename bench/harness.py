"""Side-by-side benchmark harness: ours vs stock mmdet in one process, same inputs.

Each case is timed as the median of ``repeats`` runs after ``warmup`` runs; :func:`measure_pair`
alternates stock and ours run by run, so that the machine's slow phases hit both sides alike.
Peak extra memory is measured per case: on CUDA with the allocator's peak counter, on CPU from
the kernel's resident-set high-water mark (``VmHWM``), reset before each run through
``/proc/self/clear_refs`` after freed heap memory is handed back to the OS (``malloc_trim``).
"""
from __future__ import annotations

import ctypes
import datetime
import gc
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple, Union

import torch

RESULTS_DIR = Path(__file__).resolve().parent / 'results'


def _rss_kib(field: str) -> int:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1])
    raise RuntimeError(f'{field} not in /proc/self/status')


def _trim_heap() -> None:
    """Hands freed heap memory back to the OS (glibc keeps it otherwise), so that a run's RSS
    growth is not hidden by pages an earlier run left resident."""
    try:
        ctypes.CDLL('libc.so.6').malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the peak may then read low
        pass


def _reset_cpu_peak() -> bool:
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')  # "5" resets the peak RSS to the current RSS
        return True
    except OSError:
        return False


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def _run_once(fn: Callable[[], object], device: torch.device) -> Tuple[float, float]:
    """One timed run of ``fn``: ``(seconds, peak bytes above the level at its start)``."""
    gc.collect()
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        _trim_heap()
        ok = _reset_cpu_peak()
        base = _rss_kib('VmRSS') * 1024
    t0 = time.perf_counter()
    fn()
    _sync(device)
    elapsed = time.perf_counter() - t0
    if device.type == 'cuda':
        peak = torch.cuda.max_memory_allocated(device) - base
    else:
        peak = _rss_kib('VmHWM') * 1024 - base if ok else float('nan')
    return elapsed, peak


def _stats(runs: List[Tuple[float, float]]) -> Dict[str, float]:
    times = [t for t, _ in runs]
    return {'median_s': statistics.median(times), 'min_s': min(times),
            'peak_extra_mib': max(p for _, p in runs) / 2**20}


def measure(fn: Callable[[], object], repeats: int = 5, warmup: int = 1,
            device: torch.device | str = 'cpu') -> Dict[str, float]:
    """Times ``fn``; returns ``{'median_s', 'min_s', 'peak_extra_mib'}``.

    Peak extra memory is the largest amount held above the level at the start of a run, over
    all runs (``nan`` where the platform cannot measure it).
    """
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    _sync(device)
    return _stats([_run_once(fn, device) for _ in range(repeats)])


def measure_pair(stock: Callable[[], object], ours: Callable[[], object], repeats: int = 5,
                 warmup: int = 1, device: torch.device | str = 'cpu'
                 ) -> Dict[str, Dict[str, float]]:
    """Times ``stock`` and ``ours`` alternately (stock, ours, stock, ours, ...), so that a slow
    phase of a noisy machine hits both sides alike; returns ``{'stock': ..., 'ours': ...}`` in
    :func:`measure`'s format."""
    device = torch.device(device)
    for _ in range(warmup):
        stock()
        ours()
    _sync(device)
    runs: Dict[str, List[Tuple[float, float]]] = {'stock': [], 'ours': []}
    for _ in range(repeats):
        runs['stock'].append(_run_once(stock, device))
        runs['ours'].append(_run_once(ours, device))
    return {name: _stats(r) for name, r in runs.items()}


def machine() -> Dict[str, str]:
    info = {'cpu': platform.processor() or platform.machine(), 'cores': str(os.cpu_count()),
            'torch': torch.__version__, 'threads': str(torch.get_num_threads())}
    if torch.cuda.is_available():
        info['gpu'] = torch.cuda.get_device_name()
    return info


def report(name: str, rows: List[Dict[str, object]],
           notes: Union[str, Sequence[str], None] = None) -> Path:
    """Prints a table of ``rows`` (each: case, stock, ours measurements) and writes JSON.

    Each row must hold ``case`` and the dicts ``stock`` and ``ours`` from :func:`measure`; the
    ratio column is stock time / ours time (> 1 means we are faster). ``notes`` given as lines
    are printed after the table, one per line, and stored joined by ``'; '``.
    """
    print(f'\n== {name} ==  ({machine()})')
    print(f'{"case":44s} {"stock s":>9s} {"ours s":>9s} {"stock/ours":>10s} '
          f'{"stock MiB":>10s} {"ours MiB":>9s}')
    for r in rows:
        s, o = r['stock'], r['ours']
        r['ratio'] = s['median_s'] / o['median_s']
        print(f'{r["case"]:44s} {s["median_s"]:9.4f} {o["median_s"]:9.4f} {r["ratio"]:10.2f} '
              f'{s["peak_extra_mib"]:10.1f} {o["peak_extra_mib"]:9.1f}')
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f'{name}.json'
    lines = None if notes is None or isinstance(notes, str) else list(notes)
    out.write_text(json.dumps({'name': name, 'date': datetime.date.today().isoformat(),
                               'machine': machine(),
                               'notes': notes if lines is None else '; '.join(lines),
                               'rows': rows}, indent=2))
    print(f'-> {out}')
    if lines:
        print('\n'.join(lines))
    return out
