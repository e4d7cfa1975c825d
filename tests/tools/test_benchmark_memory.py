"""tools/benchmark_memory.py: one fresh process per setting, a JSON line each, the table with its ratios."""
import json

import pytest

from tests.scripts import one_line_error, script_main
from tools.benchmark_memory import table


def test_table_gives_checkpointed_over_plain_ratios():
    results = [dict(model='m', size=224, batch_size=8, grad_checkpointing=False, peak_rss_mib=2000, rise_mib=1500,
                    step_s=10.0),
               dict(model='m', size=224, batch_size=8, grad_checkpointing=True, peak_rss_mib=1000, rise_mib=500,
                    step_s=13.0)]
    rows = table(results)
    assert len(rows) == 3
    assert rows[2] == '| m | 224 | 8 | 2000 MiB | 1000 MiB | 0.50 | 1500 MiB | 500 MiB | 0.33 | 10.00 s | 13.00 s | 1.30 |'


@pytest.mark.slow
def test_each_setting_runs_in_its_own_process(tmp_path, capsys):
    out = tmp_path / 'memory.json'
    assert script_main('tools/benchmark_memory.py')(['--models', 'cvt_tiny', '--sizes', '32', '--batch_size', '2',
                                                     '--warmup', '0', '--steps', '1', '--output_json', str(out)]) == 0
    results = json.loads(out.read_text())
    assert [(r['model'], r['size'], r['grad_checkpointing']) for r in results] == [
        ('cvt_tiny', 32, False), ('cvt_tiny', 32, True)]
    for r in results:
        assert r['peak_rss_mib'] > r['rise_mib'] >= 0 and r['step_s'] > 0
    printed = capsys.readouterr().out
    assert printed.count('| cvt_tiny | 32 | 2 |') == 1 and 'CPU: ' in printed
    assert one_line_error('tools/benchmark_memory.py', ['--steps', '0'], capsys) == 'error: --steps must be >= 1, got 0'
