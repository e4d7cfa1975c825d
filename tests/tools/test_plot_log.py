"""tools/plot_log.py: PNG from log.txt, overlaid runs, sparse eval, one-line errors for bad logs."""
import json
import sys

import pytest

from tools.plot_log import main, read_log, run_names, series
from cli import run_main

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def write_log(run_dir, epochs=5, skip_eval=(2,), ema=True, extra_lines=()):
    """A train.py-like log.txt: eval keys absent on the epochs in `skip_eval`."""
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for e in range(epochs):
        record = {'epoch': e, 'train_lr': 1e-3 * (e + 1) / epochs, 'train_loss': 2.3 - 0.3 * e,
                  'train_images_per_s': 500.0, 'n_parameters': 160000}
        if e not in skip_eval:
            record.update(test_loss=2.2 - 0.3 * e, test_acc1=20.0 + 10 * e, test_acc5=50.0 + 8 * e,
                          best_acc1=20.0 + 10 * e)
            if ema:
                record['test_ema_acc1'] = 18.0 + 10 * e
        lines.append(json.dumps(record))
    (run_dir / 'log.txt').write_text('\n'.join(list(lines) + list(extra_lines)) + '\n')
    return run_dir


def run_cli(argv, capsys):
    """(exit status, stdout, stderr) of the script's entry point, in process."""
    with pytest.raises(SystemExit) as exit_info:
        run_main(main, argv)
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def test_read_log_skips_absent_eval_keys(tmp_path):
    records = read_log(str(write_log(tmp_path / 'run') / 'log.txt'))
    assert [r['epoch'] for r in records] == [0, 1, 2, 3, 4]
    assert series(records, 'test_acc1') == ([0, 1, 3, 4], [20.0, 30.0, 50.0, 60.0])
    assert series(records, 'train_loss')[0] == [0, 1, 2, 3, 4]


def test_relogged_epoch_keeps_newest_and_lr_series_drops_nonpositive(tmp_path):
    again = json.dumps({'epoch': 1, 'train_loss': 9.0, 'train_lr': 0.0})
    records = read_log(str(write_log(tmp_path / 'run', extra_lines=[again]) / 'log.txt'))
    assert [r['epoch'] for r in records] == [0, 1, 2, 3, 4]
    assert records[1]['train_loss'] == 9.0
    assert 1 not in series(records, 'train_lr', positive=True)[0]  # a log axis cannot show lr 0


def test_single_run_writes_png_next_to_log(tmp_path, capsys):
    pytest.importorskip('matplotlib', reason='plot_log draws with matplotlib (requirements-dev.txt)')
    run = write_log(tmp_path / 'cvt_tiny')
    code, out, err = run_cli([str(run)], capsys)
    png = run / 'curves.png'
    assert code == 0, err
    assert out.strip() == str(png)
    data = png.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 10_000
    assert sorted(p.name for p in run.iterdir()) == ['curves.png', 'log.txt']  # no temp file left behind


def test_two_runs_overlay_into_chosen_file(tmp_path, capsys):
    pytest.importorskip('matplotlib', reason='plot_log draws with matplotlib (requirements-dev.txt)')
    a = write_log(tmp_path / 'a' / 'run', ema=True)
    b = write_log(tmp_path / 'b' / 'run', ema=False, skip_eval=(0, 1, 2, 3))
    out_png = tmp_path / 'plots' / 'compare.png'
    code, out, err = run_cli([str(a), str(b / 'log.txt'), '--out', str(out_png), '--title', 'a vs b'], capsys)
    assert code == 0, err
    assert out.strip() == str(out_png)
    assert out_png.read_bytes()[:8] == PNG_MAGIC
    assert not (a / 'curves.png').exists()


def test_legend_names_are_folder_names_unless_they_clash(tmp_path):
    a, b = write_log(tmp_path / 'x' / 'run'), write_log(tmp_path / 'y' / 'run')
    assert run_names([str(tmp_path / 'x'), str(tmp_path / 'y') + '/']) == ['x', 'y']
    assert run_names([str(a), str(b / 'log.txt')]) == [str(a), str(b)]


def test_corrupt_line_error_names_file_and_line(tmp_path, capsys):
    run = write_log(tmp_path / 'run', extra_lines=['{"epoch": 5, "train_loss": 0.'])
    code, out, err = run_cli([str(run)], capsys)
    assert code == 1 and out == ''
    assert err.startswith(f'error: {run / "log.txt"}:6: ') and 'JSON' in err
    assert err.count('\n') == 1
    assert not (run / 'curves.png').exists()


@pytest.mark.parametrize('line, found', [('[1, 2]', 'found list'), ('{"train_loss": 1.0}', "'epoch'"),
                                         ('{"epoch": 0, "test_acc1": "high"}', "'test_acc1'")])
def test_malformed_record_error_names_file_line_and_key(tmp_path, line, found):
    path = tmp_path / 'log.txt'
    path.write_text(json.dumps({'epoch': 0, 'train_loss': 1.0}) + '\n\n' + line + '\n')
    with pytest.raises(ValueError, match=rf'log\.txt:3: .*{found}'):
        read_log(str(path))


def test_missing_and_empty_logs_are_one_line_errors(tmp_path, capsys):
    code, _, err = run_cli([str(tmp_path / 'nowhere')], capsys)
    assert code == 1 and err.startswith(f"error: {tmp_path / 'nowhere' / 'log.txt'}: no such log file")
    (tmp_path / 'empty').mkdir()
    (tmp_path / 'empty' / 'log.txt').write_text('\n')
    code, _, err = run_cli([str(tmp_path / 'empty')], capsys)
    assert code == 1 and 'empty/log.txt: no epoch records' in err and err.count('\n') == 1


def test_missing_matplotlib_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    for name in [m for m in sys.modules if m == 'matplotlib' or m.startswith('matplotlib.')]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, 'matplotlib', None)  # makes `import matplotlib...` raise ImportError
    code, _, err = run_cli([str(write_log(tmp_path / 'run'))], capsys)
    assert code == 1
    assert err == 'error: tools/plot_log.py needs matplotlib: pip install matplotlib\n'
