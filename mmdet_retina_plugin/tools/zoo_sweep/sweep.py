"""The sweep: configs per family, build checks (in parallel processes), one step per family,
the summary and its markdown report."""
import argparse
import json
import os
import os.path as osp
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from .builds import check_builds
from .step import check_step
from .zoo_configs import (
    STEP_TRIES,
    SWAP_SETS,
    SWAPS,
    cost_key,
    discover,
    family,
    load_config,
)


def _model_key(entry: Dict[str, Any]) -> str:
    return json.dumps([entry['model'], entry.get('custom_imports')], sort_keys=True, default=str)


def _build_task(args: Tuple[dict, Optional[dict]]) -> Dict[str, Any]:
    return check_builds(*args)


def _one_thread() -> None:
    torch.set_num_threads(1)


def _map(func: Any, tasks: List[Any], workers: int, log: Any) -> List[Any]:
    """``func`` over ``tasks``: here, or in ``workers`` spawned one-thread processes."""
    if workers <= 1 or len(tasks) <= 1:
        results = map(func, tasks)
        pool = None
    else:
        import multiprocessing
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context('spawn'),
                                   initializer=_one_thread)
        results = pool.map(func, tasks, chunksize=1)
    out, start = [], time.time()
    try:
        for index, result in enumerate(results, 1):
            out.append(result)
            if index % 25 == 0:
                log(f'  {index}/{len(tasks)} done ({time.time() - start:.0f} s)')
    finally:
        if pool is not None:
            pool.shutdown()
    return out


def _family_task(args: Tuple[List[str], Dict[str, Dict[str, Any]]]
                 ) -> Tuple[List[Dict[str, Any]], Optional[Dict[str, Any]]]:
    """One family: its build representative (unless ``done`` has every config checked) and
    its training step.

    Args:
        args (tuple): the family's configs cheapest first, and the entries already parsed and
            checked (``{config: entry}``, empty in the one-per-family mode).

    Returns:
        tuple: the family's entries parsed here or given, and its step record (None when no
        config of the family uses the types).
    """
    paths, done = args
    entries = dict(done)

    def checked(rel: str) -> Optional[Dict[str, Any]]:
        """The config's entry with its build checks, None when it does not use the types."""
        if rel not in entries:
            entries[rel] = load_config(rel)
        entry = entries[rel]
        if not entry['types']:
            return None
        if 'result' not in entry:
            entry['result'] = check_builds(entry['model'], entry.get('custom_imports'))
        return entry

    for rel in paths:
        entry = checked(rel)
        if entry is None:
            continue
        if not entry['result']['stock']:
            break
    record: Dict[str, Any] = {'config': None, 'tried': []}
    for rel in paths:
        entry = checked(rel)
        if entry is None:
            continue
        if entry['result']['stock']:
            continue
        step = check_step(entry['model'], entry.get('custom_imports'))
        if step['stock'] and len(record['tried']) + 1 < STEP_TRIES:
            record['tried'].append([entry['config'], step['stock']])
            continue
        record.update(config=entry['config'], step=step)
        if step['errors']:
            record['by_type'] = _attribute(entry)
        break
    kept = any(e['types'] for e in entries.values())
    return list(entries.values()), (record if kept else None)


def run_sweep(rel_paths: Sequence[str], everything: bool, workers: int = 1,
              log: Any = None) -> Dict[str, Any]:
    """Checks configs: one per family (``everything=False``) or all, plus one step per family.

    Each family's configs are taken cheapest first (:func:`cost_key`). The first one that uses
    the four types and whose stock builds is the family's build representative (with
    ``everything=False`` the family's later configs are parsed only when needed); the first of
    up to :data:`STEP_TRIES` such configs whose stock training step runs is its step config.
    Both modes therefore step the same configs.

    Args:
        rel_paths (Sequence[str]): configs relative to :func:`config_root`.
        everything (bool): check every config that uses the types.
        workers (int): processes (1: all in this process).
        log (callable, optional): called with progress lines.

    Returns:
        dict: ``total`` (configs given), ``configs`` (:func:`load_config` entries of the configs
        parsed, each checked one with ``result``: :func:`check_builds`' dict) and ``steps`` (per
        family with a kept config: ``config``, ``step`` (:func:`check_step`'s dict), ``tried``
        (configs whose stock step failed before) and, when ours fails, ``by_type``).
    """
    log = log or (lambda line: None)
    by_family: Dict[str, List[str]] = {}
    for rel in rel_paths:
        by_family.setdefault(family(rel), []).append(rel)
    for members in by_family.values():
        members.sort(key=cost_key)
    done: Dict[str, Dict[str, Dict[str, Any]]] = {name: {} for name in by_family}
    if everything:
        start = time.time()
        parsed = _map(load_config, sorted(rel_paths), workers, log)
        kept = [e for e in parsed if e['types']]
        log(f'parsed {len(parsed)} configs in {time.time() - start:.0f} s: '
            f'{len(kept)} use the types')
        todo: Dict[str, Tuple[dict, Optional[dict]]] = {}
        for entry in kept:
            todo.setdefault(_model_key(entry), (entry['model'], entry.get('custom_imports')))
        start = time.time()
        results = dict(zip(todo, _map(_build_task, list(todo.values()), workers, log)))
        log(f'built {len(todo)} distinct models for {len(kept)} configs in '
            f'{time.time() - start:.0f} s')
        for entry in parsed:
            if entry['types']:
                entry['result'] = results[_model_key(entry)]
            done[entry['family']][entry['config']] = entry
    names = sorted(by_family)
    entries: List[Dict[str, Any]] = []
    steps: Dict[str, Dict[str, Any]] = {}
    start = time.time()
    tasks = [(by_family[name], done[name]) for name in names]
    for name, (family_entries, record) in zip(names, _map(_family_task, tasks, workers, log)):
        entries += family_entries
        if record is not None:
            steps[name] = record
            failed = sorted({f'{e["config"]} [{s}]: {"; ".join(errs)}' for e in family_entries
                             if 'result' in e for s, errs in e['result']['swaps'].items()
                             if errs})
            log(f'{name}: {record["config"]}: step {_step_status(record)}'
                + ''.join(f'\n  build FAIL {line}' for line in failed))
    log(f'families done in {time.time() - start:.0f} s')
    return {'total': len(rel_paths), 'configs': sorted(entries, key=lambda e: e['config']),
            'steps': steps}


def _attribute(entry: Dict[str, Any]) -> Dict[str, List[str]]:
    """For a failing step: the step with each present type swapped alone."""
    out = {}
    for name in SWAPS:
        if name in entry['types']:
            step = check_step(entry['model'], entry.get('custom_imports'), (name,))
            out[name] = step['errors'] or ([step['stock']] if step['stock'] else [])
    return out


def _step_status(record: Dict[str, Any]) -> str:
    step = record.get('step')
    if step is None:
        return 'no config whose stock builds'
    if step['stock']:
        return 'not compared: ' + step['stock']
    return 'FAIL: ' + '; '.join(step['errors']) if step['errors'] else 'ok'


def summarize(sweep: Dict[str, Any]) -> Dict[str, Any]:
    """Counts and lists from :func:`run_sweep`'s result (JSON-able).

    Returns:
        dict: ``counts`` per swap set (``pass``, ``fail``, ``stock_builds``, ``uses``),
        ``step`` counts, ``stock_unbuildable`` and ``unloadable`` lists with reasons,
        ``failures`` (config, swap set, errors) and per-family ``steps``.
    """
    checked = [e for e in sweep['configs'] if 'result' in e]
    counts = {}
    for set_name in SWAP_SETS:
        uses = [e for e in checked if set_name == 'all' or set_name in e['types']]
        built = [e for e in uses if not e['result']['stock']]
        passed = [e for e in built if e['result']['swaps'].get(set_name) == []]
        counts[set_name] = dict(uses=len(uses), stock_builds=len(built), passed=len(passed),
                                failed=len(built) - len(passed))
    failures = [dict(config=e['config'], swap=s, errors=errs) for e in checked
                for s, errs in e['result']['swaps'].items() if errs]
    steps = sweep['steps']
    step_counts = dict(families=len(steps),
                       compared=sum(1 for r in steps.values()
                                    if r.get('step') and not r['step']['stock']),
                       passed=sum(1 for r in steps.values() if _step_status(r) == 'ok'))
    step_counts['failed'] = sum(1 for r in steps.values()
                                if _step_status(r).startswith('FAIL'))
    return dict(
        configs_total=sweep['total'], configs_parsed=len(sweep['configs']),
        configs_using_types=sum(1 for e in sweep['configs'] if e['types']),
        configs_checked=len(checked),
        counts=counts, step=step_counts,
        stock_unbuildable=[dict(config=e['config'], reason=e['result']['stock'])
                           for e in checked if e['result']['stock']],
        unloadable=[dict(config=e['config'], reason=e['load_error'])
                    for e in sweep['configs'] if 'load_error' in e],
        failures=failures,
        steps={name: dict(config=r.get('config'), status=_step_status(r),
                          tried=r['tried'], by_type=r.get('by_type'),
                          losses=(r.get('step') or {}).get('losses'),
                          grad_error=(r.get('step') or {}).get('grad_error'))
               for name, r in steps.items()})


def markdown(summary: Dict[str, Any], seconds: float, everything: bool) -> str:
    """The report as markdown: counts, step table, failures and stock-unbuildable configs."""
    lines = [f'# Drop-in sweep ({"all configs" if everything else "one config per family"}, '
             f'{seconds:.0f} s)', '',
             f'{summary["configs_total"]} configs, {summary["configs_parsed"]} parsed, '
             f'{summary["configs_using_types"]} of them use FPN/FocalLoss/MaxIoUAssigner/'
             f'RetinaHead, {summary["configs_checked"]} checked.', '',
             '| swap | passed / stock builds | failed | use the type | stock cannot build |',
             '|---|---:|---:|---:|---:|']
    for name, c in summary['counts'].items():
        label = 'all four' if name == 'all' else name
        lines.append(f'| {label} | {c["passed"]}/{c["stock_builds"]} | {c["failed"]} | '
                     f'{c["uses"]} | {c["uses"] - c["stock_builds"]} |')
    s = summary['step']
    lines += ['', f'Training step: {s["passed"]}/{s["compared"]} families equal to stock '
              f'({s["failed"]} differ, {s["families"] - s["compared"]} not compared).', '',
              '| family | config | step |', '|---|---|---|']
    for name, r in sorted(summary['steps'].items()):
        lines.append(f'| {name} | {r["config"]} | {r["status"]} |')
    if summary['failures']:
        lines += ['', '## Failures', '']
        lines += [f'- `{f["config"]}` [{f["swap"]}]: {"; ".join(f["errors"])}'
                  for f in summary['failures']]
    lines += ['', '## Stock cannot build', '']
    lines += [f'- `{u["config"]}`: {u["reason"]}' for u in summary['stock_unbuildable']]
    lines += ['', '## Stock cannot load', '']
    lines += [f'- `{u["config"]}`: {u["reason"]}' for u in summary['unloadable']]
    return '\n'.join(lines) + '\n'


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs the sweep, writes ``report.json`` and ``report.md`` and prints the markdown.

    Args:
        argv (Sequence[str], optional): command-line arguments (``--help``).

    Returns:
        int: 0 when ours equals stock everywhere it was compared, 1 otherwise.
    """
    parser = argparse.ArgumentParser(
        prog='python -m mmdet_retina_plugin.tools.zoo_sweep',
        description='Model-zoo sweep: our four modules swapped into every config that mmdet '
                    'ships.')
    parser.add_argument('--all', action='store_true',
                        help='every config (default: one per family, as the test suite)')
    parser.add_argument('--workers', type=int, default=2, help='processes for the builds')
    parser.add_argument('--out', default='work_dirs/dropin', help='report folder')
    parser.add_argument('--family', action='append', help='only these config folders')
    args = parser.parse_args(argv)
    start = time.time()
    paths = [p for p in discover() if not args.family or family(p) in args.family]
    sweep = run_sweep(paths, args.all, args.workers, log=lambda s: print(s, flush=True))
    summary = summarize(sweep)
    seconds = time.time() - start
    summary['seconds'] = seconds
    os.makedirs(args.out, exist_ok=True)
    with open(osp.join(args.out, 'report.json'), 'w') as f:
        json.dump(summary, f, indent=1, default=str)
    text = markdown(summary, seconds, args.all)
    with open(osp.join(args.out, 'report.md'), 'w') as f:
        f.write(text)
    print(text)
    return 1 if summary['failures'] or summary['step']['failed'] else 0

