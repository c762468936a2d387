""" Output writers of the benchmark: CSV, JSON, Markdown table, PNG plot.

Copyright the timm-resattn authors, Apache-2.0.
"""
import csv
import json
from pathlib import Path
from typing import Any, Dict, List, Optional

from .activations import activation_markdown

__all__ = ['CSV_COLUMNS', 'write_csv', 'write_json', 'write_markdown', 'write_plot', 'OUTPUT_FILES', 'run_settings']

OUTPUT_FILES = {
    'csv': 'results.csv',
    'json': 'results.json',
    'md': 'results.md',
    'png': 'throughput_vs_gmacs.png',
}

CSV_COLUMNS = [
    'model', 'kind', 'mode', 'runtime', 'params_m', 'gmacs', 'img_s_median', 'img_s_min', 'img_s_max',
    'ms_per_step_median', 'peak_mem_mib', 'peak_reserved_mib', 'peer', 'speedup_vs_peer', 'mac_ratio_peer_over_ours',
    'device', 'device_name', 'precision', 'tf32', 'batch_size', 'img_size', 'channels_last', 'compile', 'fuse_bn',
    'threads',
    'repeats', 'iters', 'warmup',
    'saved_act_mib_per_img',
]


def _fmt(v: Optional[float], spec: str) -> str:
    return '-' if v is None else format(v, spec)


def write_csv(rows: List[Dict[str, Any]], path: Path) -> None:
    """ One row per (model, mode), columns ``CSV_COLUMNS``. """
    with open(path, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction='ignore')
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ('' if row.get(k) is None else row.get(k)) for k in CSV_COLUMNS})


def write_json(data: Dict[str, Any], path: Path) -> None:
    with open(path, 'w') as f:
        json.dump(data, f, indent=2)
        f.write('\n')


def _run_label(mode: str, runtime: str) -> str:
    return mode if runtime == 'eager' else f'{mode} [{runtime}]'


def run_settings(cfg: Dict[str, Any], env: Dict[str, Any]) -> List[str]:
    """ The settings of a run in words, for its title: precision (with TF32 on CUDA fp32), layout, what ran
    (eager or ``torch.compile`` with its backend, one model at a time), BN folding.
    """
    opts = [cfg['precision']]
    if str(cfg['device']).startswith('cuda') and cfg['precision'] == 'fp32':
        conv, mm = env.get('tf32_cudnn_conv'), env.get('tf32_matmul')
        opts.append(f"TF32 convs {'on' if conv else 'off'}, matmuls {'on' if mm else 'off'}")
    if cfg['channels_last']:
        opts.append('channels_last')
    if cfg['compile']:
        opts.append(cfg.get('compile_label') or 'torch.compile')
        opts.append('one model at a time')
    else:
        opts.append('eager')
    if cfg['fuse_bn']:
        opts.append('BN folded (inference)')
    return opts


def write_markdown(data: Dict[str, Any], path: Path) -> None:
    """ The results table of every model, then each of our nets against its ResNet peer, one column per
    (mode, runtime) run.
    """
    cfg, env, modes = data['config'], data['env'], data['config']['modes']
    runs = [tuple(r) for r in cfg.get('runs', [(m, 'eager') for m in modes])]
    deployed = list(dict.fromkeys(rt for _, rt in runs if rt != 'eager'))
    models, rows = data['models'], data['rows']
    by_key = {(r['model'], r['mode'], r.get('runtime', 'eager')): r for r in rows}
    eager_modes = [m for m, rt in runs if rt == 'eager']
    opts = run_settings(cfg, env)
    lines = [
        f"# Throughput: {env['device_name']} ({cfg['device']}), {', '.join(opts)}, batch {cfg['batch_size']}, "
        f"{cfg['img_size']}x{cfg['img_size']}, {env['threads']} threads",
        '',
        f"torch {env['torch']}, timm {env['timm']}, timm_resattn {env['timm_resattn']}"
        + (f", commit {env['git_commit']}" if env.get('git_commit') else '')
        + f". Median of {cfg['repeats']} interleaved repeats of {cfg['iters']} steps each "
        f"({cfg['warmup']} warm-up steps excluded). Train = forward + backward + SGD step. "
        f"Peak memory: {data['memory_method']}."
        + (f" 1-min load average {env['loadavg_1min_start']} at the start, {env['loadavg_1min_end']} at the end "
           f"({env['cpu_count']} CPUs): a load above the CPU count means the timings are contended."
           if env.get('loadavg_1min_start') is not None and cfg['device'] == 'cpu' else ''),
        '',
    ]
    for note in data.get('notes', []):
        lines += [f'Note: {note}.', '']
    if deployed:
        lines += [
            'Runtimes: `eager` = the PyTorch model; `export` = its `torch.export` program (dynamic batch/height/width, '
            '`timm_resattn.export.export_program`) run by `ExportedProgram.module()`, op by op, no compiler; '
            '`onnxruntime` = that program as ONNX (`export_onnx`), onnxruntime CPU session, all graph optimisations. '
            '"set-up s" (not part of the throughput): the torch.export under `export`, the ONNX translation and '
            'session creation under `onnxruntime`.',
            '',
        ]
    head = ['model', 'params (M)', 'GMACs']
    for mode, rt in runs:
        label = _run_label(mode, rt)
        head += [f'{label} img/s', f'{label} ms/step']
    show_reserved = any(r.get('peak_reserved_mib') is not None for r in rows)
    for mode in eager_modes:
        head.append(f'{mode} peak MiB')
        if show_reserved:
            head.append(f'{mode} peak reserved MiB')
    show_saved = bool(data.get('activations'))
    if show_saved:
        head.append(f"saved act. MiB/img ({cfg['precision']})")
    for rt in deployed:
        head.append(f'{rt} set-up s')
    lines += ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for name, info in models.items():
        cells = [f"`{name}`", f"{info['params'] / 1e6:.2f}", f"{info['macs'] / 1e9:.2f}"]
        for mode, rt in runs:
            r = by_key.get((name, mode, rt), {})
            cells += [_fmt(r.get('img_s_median'), '.2f'), _fmt(r.get('ms_per_step_median'), '.1f')]
        for mode in eager_modes:
            cells.append(_fmt(by_key.get((name, mode, 'eager'), {}).get('peak_mem_mib'), '.0f'))
            if show_reserved:
                cells.append(_fmt(by_key.get((name, mode, 'eager'), {}).get('peak_reserved_mib'), '.0f'))
        if show_saved:
            cells.append(_fmt(next((r['saved_mib_per_img'] for r in data['activations']
                                    if r['model'] == name and r['variant'] == 'plain'), None), '.1f'))
        for rt in deployed:
            cells.append(_fmt(info.get('setup_seconds', {}).get(rt), '.0f'))
        lines.append('| ' + ' | '.join(cells) + ' |')

    ours = [n for n, info in models.items() if info['kind'] == 'ours' and info.get('peer')]
    if ours:
        lines += [
            '',
            '## Against the ResNet peer',
            '',
            'Speed-up = our images/s / the peer\'s images/s (same mode); MAC ratio = peer GMACs / our GMACs, the '
            'speed-up a net would get if time were proportional to MACs.',
            '',
        ]
        head = ['model', 'peer'] + [f'{_run_label(mode, rt)} speed-up' for mode, rt in runs] + ['MAC ratio']
        lines += ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
        for name in ours:
            peer = models[name]['peer']
            cells = [f'`{name}`', f'`{peer}`']
            for mode, rt in runs:
                cells.append(_fmt(by_key.get((name, mode, rt), {}).get('speedup_vs_peer'), '.2f') + 'x')
            cells.append(f"{models[name]['mac_ratio']:.2f}x")
            lines.append('| ' + ' | '.join(cells) + ' |')
    if data.get('activations'):
        lines += [''] + activation_markdown(data['activations'])
    path.write_text('\n'.join(lines) + '\n')


def write_plot(data: Dict[str, Any], path: Path) -> None:
    """ Throughput against GMACs, one panel per (mode, runtime) run, one labelled marker per model. Needs
    matplotlib.
    """
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise RuntimeError(
            'the throughput plot needs matplotlib: pip install -e ".[bench]" (or pip install matplotlib), '
            'or pass --no-plot'
        ) from e
    cfg, models, rows = data['config'], data['models'], data['rows']
    runs = [tuple(r) for r in cfg.get('runs', [(m, 'eager') for m in cfg['modes']])]
    fig, axes = plt.subplots(1, len(runs), figsize=(6 * len(runs), 4.8), squeeze=False)
    for ax, (mode, rt) in zip(axes[0], runs):
        xmax = ymax = 0.
        for r in rows:
            if r['mode'] != mode or r.get('runtime', 'eager') != rt or r.get('img_s_median') is None:
                continue
            xmax, ymax = max(xmax, r['gmacs']), max(ymax, r['img_s_median'])
            ours = models[r['model']]['kind'] == 'ours'
            x, y = r['gmacs'], r['img_s_median']
            ax.scatter([x], [y], marker='o' if ours else 's', s=60, color='tab:red' if ours else 'tab:blue',
                       edgecolor='black', zorder=3)
            ax.annotate(r['model'], (x, y), textcoords='offset points', xytext=(5, 5), fontsize=8)
        ax.set_xlabel(f"GMACs / image ({cfg['img_size']}x{cfg['img_size']})")
        ax.set_ylabel('images / s')
        ax.set_title(f"{_run_label(mode, rt)}: {cfg['device']}, {', '.join(run_settings(cfg, data['env']))}, "
                     f"batch {cfg['batch_size']}", fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.set_ylim(0, 1.15 * ymax or 1)
        ax.set_xlim(0, 1.3 * xmax or 1)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
