"""Training curves of one or more train.py runs, drawn from their JSON-lines epoch log (log.txt) into a PNG.

    python tools/plot_log.py output/cvt_13_224x224
    python tools/plot_log.py output/run_a output/run_b --out compare.png --title "mixup vs none"

Three panels over the logged epoch: train (and test) loss, val top-1/top-5 (and EMA top-1), learning rate
on a log scale. Runs overlay in one colour each. Epochs without eval (--eval_freq > 1) simply have no eval
points. Needs matplotlib (optional extra); paddle is not imported.
"""
import _bootstrap  # noqa: F401  (first: repo root on sys.path, then utils.env)

import json
import math
import os
from typing import List, Optional, Sequence, Tuple

from cli import run_main, script_parser
from utils.fileio import atomic_write

LOG_NAME = 'log.txt'
DEFAULT_PNG = 'curves.png'
MATPLOTLIB_MISSING = 'tools/plot_log.py needs matplotlib: pip install matplotlib'
# (panel title, y label, [(log key, legend label, line style)])
PANELS = (
    ('loss', 'loss', [('train_loss', 'train', '-'), ('test_loss', 'val', '--')]),
    ('val accuracy', 'accuracy (%)', [('test_acc1', 'top-1', '-'), ('test_acc5', 'top-5', '--'),
                                      ('test_ema_acc1', 'EMA top-1', ':')]),
    ('learning rate', 'lr', [('train_lr', 'lr', '-')]),
)
PLOTTED_KEYS = tuple(key for _, _, lines in PANELS for key, _, _ in lines) + ('best_acc1',)

Run = Tuple[str, List[dict]]  # (legend name, epoch records sorted by epoch)


def log_path(run: str) -> str:
    """The log.txt of a run dir; a path to the log file itself is accepted too."""
    return run if os.path.isfile(run) else os.path.join(run, LOG_NAME)


def read_log(path: str) -> List[dict]:
    """Epoch records of a JSON-lines log, one per epoch (the last line wins), sorted by epoch."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f'{path}: no such log file (expected the log.txt that train.py writes)')
    by_epoch = {}
    with open(path, encoding='utf-8') as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                record = _parse_record(line, f'{path}:{lineno}')
                by_epoch[record['epoch']] = record  # a resumed run may log an epoch again: keep the newest
    if not by_epoch:
        raise ValueError(f'{path}: no epoch records (empty log; expected one JSON object per line)')
    return [by_epoch[e] for e in sorted(by_epoch)]


def _parse_record(line: str, where: str) -> dict:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f'{where}: expected one JSON object per line, found invalid JSON ({e.msg})') from None
    if not isinstance(record, dict):
        raise ValueError(f'{where}: expected a JSON object, found {type(record).__name__}')
    if not _is_number(record.get('epoch')):
        raise ValueError(f"{where}: expected a numeric 'epoch', found {record.get('epoch')!r}")
    for key in PLOTTED_KEYS:
        value = record.get(key)
        if value is not None and not _is_number(value):
            raise ValueError(f"{where}: expected a number or null for '{key}', found {value!r}")
    return record


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def series(records: Sequence[dict], key: str, positive: bool = False) -> Tuple[List[float], List[float]]:
    """(epochs, values) of the records that logged a finite `key` (> 0 when `positive`, for log axes)."""
    points = [(r['epoch'], r[key]) for r in records
              if r.get(key) is not None and math.isfinite(r[key]) and (r[key] > 0 or not positive)]
    return [p[0] for p in points], [p[1] for p in points]


def run_names(runs: Sequence[str]) -> List[str]:
    """Legend names: the run folder names, or the paths as given when two folders share a name."""
    dirs = [os.path.dirname(r) if os.path.isfile(r) else r for r in runs]
    names = [os.path.basename(os.path.normpath(os.path.abspath(d))) for d in dirs]
    return names if len(set(names)) == len(names) else [os.path.normpath(d) for d in dirs]


def plot_runs(runs: Sequence[Run], out_path: str, title: Optional[str] = None) -> None:
    """Draw the three panels for `runs` and write them to `out_path` as a PNG, atomically."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D
    except ImportError:
        raise ValueError(MATPLOTLIB_MISSING) from None
    fig = Figure(figsize=(16, 4.8), dpi=110, layout='constrained')
    FigureCanvasAgg(fig)  # render without a display, whatever the default backend is
    colors = [f'C{i % 10}' for i in range(len(runs))]
    for ax, panel in zip(fig.subplots(1, 3, sharex=True), PANELS):
        _draw_panel(ax, panel, runs, colors)
    if title:
        fig.suptitle(title)
    handles = [Line2D([], [], color=c, linewidth=2.5) for c in colors]
    fig.legend(handles, [_run_label(name, records) for name, records in runs], loc='outside lower center',
               ncols=min(len(runs), 4), frameon=False)
    _save_atomic(fig, out_path)


def _draw_panel(ax, panel: tuple, runs: Sequence[Run], colors: Sequence[str]) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator
    panel_title, ylabel, lines = panel
    is_lr = panel_title == 'learning rate'
    styles = []  # (label, line style) of the metrics drawn, for this panel's legend
    for color, (_, records) in zip(colors, runs):
        for key, label, style in lines:
            x, y = series(records, key, positive=is_lr)
            if x:
                ax.plot(x, y, style, color=color, marker='.', markersize=5, linewidth=1.4)
                if (label, style) not in styles:
                    styles.append((label, style))
    ax.set_title(panel_title)
    ax.set_xlabel('epoch')
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    if not styles:
        ax.text(0.5, 0.5, 'not logged', ha='center', va='center', transform=ax.transAxes, color='grey')
        return
    if is_lr:
        ax.set_yscale('log')
    if len(lines) > 1:  # line styles name the metrics; colours name the runs (figure legend)
        ax.legend([Line2D([], [], color='black', linestyle=s) for _, s in styles], [label for label, _ in styles],
                  fontsize='small')


def _run_label(name: str, records: Sequence[dict]) -> str:
    best = [r['best_acc1'] for r in records if r.get('best_acc1') is not None]
    return f'{name} (best top-1 {best[-1]:.2f}%)' if best else name


def _save_atomic(fig, out_path: str) -> None:
    with atomic_write(out_path) as tmp, open(tmp, 'wb') as f:
        fig.savefig(f, format='png')


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = script_parser('tools/plot_log.py', __doc__)
    parser.add_argument('runs', nargs='+', metavar='OUTPUT_DIR', help='run folder(s) holding log.txt (or the file)')
    parser.add_argument('--out', default=None, help=f'PNG to write; None means <first OUTPUT_DIR>/{DEFAULT_PNG}')
    parser.add_argument('--title', default=None, help='figure title')
    parser.add_argument('--debug', action='store_true', help='full traceback on errors')
    args = parser.parse_args(argv)
    runs: List[Run] = [(name, read_log(log_path(run))) for name, run in zip(run_names(args.runs), args.runs)]
    out = args.out or os.path.join(os.path.dirname(log_path(args.runs[0])), DEFAULT_PNG)
    plot_runs(runs, out, args.title)
    print(out)
    return 0


if __name__ == '__main__':
    run_main(main)
