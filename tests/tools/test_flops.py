"""tools/flops.py reproduces the paper's GFLOPs (multiply-adds) within 2%."""
import pytest

from tools.flops import PAPER_GFLOPS, main, measure


@pytest.mark.parametrize('name', ['cvt_13_224x224', 'cvt_21_384x384'])
def test_multiply_adds_match_the_paper(name):
    row = measure(name)
    assert abs(row['gflops'] - PAPER_GFLOPS[name]) / PAPER_GFLOPS[name] < 0.02, row
    assert row['paper_gflops'] == PAPER_GFLOPS[name]


def test_cli_prints_one_row_per_model(capsys):
    assert main(['--model', 'cvt_tiny', '--input_size', '64']) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ['model', 'input', 'GFLOPs', 'paper', 'params', '(M)']
    assert out[1].split()[:2] == ['cvt_tiny', '64'] and out[1].split()[3] == '-'
