"""tools/demo.py's output shaping on captured outputs: training's own lines out of the launcher's and
workers' chatter, one or two result lines per step, commands and next steps as the user types them."""
import json
import os
import shlex
import sys

import pytest

import tools.demo as demo
from tests.scripts import script_main
from training.args import build_train_parser
from utils.config import parse_args

# What rank 0's worker log holds under paddle.distributed.launch (captured from a demo run, shortened).
WORKER_LOG = """\
======================= Modified FLAGS detected =======================
FLAGS(name='FLAGS_enable_pir_in_executor', current_value=True, default_value=False)
=======================================================================
I1201 23:58:18.221779  3823 tcp_store.cc:336] create libuv server at port: 48205
[12/01 23:58:20 INFO] train split: 1438 images from data/digits/train
[12/01 23:58:20 INFO] training cvt_tiny for 10 epochs: 22 updates/epoch, global batch 64, data {...}
[12/01 23:58:22 INFO] Epoch: [0]  [ 0/22]  eta: 0:00:37  lr: 0.000010  loss: 2.3011 (2.3011)  time: 1.8059
[12/01 23:58:38 INFO] Epoch: [0] Total time: 0:00:18 (0.8249 s / it)
[12/01 23:58:38 INFO] Averaged stats: lr: 0.000955  loss: 2.1322 (2.1207)
[12/01 23:58:41 INFO] * epoch 0  Acc@1 68.524  Acc@5 98.329  loss 1.6017  best Acc@1 68.524
[12/01 23:58:42 WARNING] epoch 1: 2 unreadable images were replaced by other samples (see the warnings above)
[12/02 00:02:28 INFO] * epoch 9  Acc@1 97.493  Acc@5 100.000  loss 0.2584  best Acc@1 97.493
[12/02 00:02:28 INFO] weights checksum 3554.81778530053 identical on all 2 ranks
[12/02 00:02:28 INFO] done: best Acc@1 97.493; files in output/demo/cvt_tiny_demo
"""


def test_training_shows_epoch_results_warnings_and_the_end_only():
    shown = [line for line in WORKER_LOG.splitlines() if demo.shown_training_line(line)]
    assert [line.split('] ', 1)[1][:12] for line in shown] == [
        '* epoch 0  A', 'epoch 1: 2 u', '* epoch 9  A', 'done: best A']
    assert not demo.shown_training_line('LAUNCH INFO 2026-12-01 23:58:12,082 nproc_per_node: 2')
    assert demo.shown_training_line('[12/02 00:00:01 INFO] resumed from output/demo/x/checkpoint-latest.pd at epoch 10')


def test_a_followed_log_yields_only_what_was_appended(tmp_path):
    log = tmp_path / 'workerlog.0'
    log.write_text('a previous run\n')
    offset = log.stat().st_size
    with open(log, 'a') as f:
        f.write('line 1\nline 2\npartial')
    assert list(demo.appended_lines(str(log), offset, running=lambda: False)) == ['line 1', 'line 2', 'partial']
    assert list(demo.appended_lines(str(tmp_path / 'not yet'), 0, running=lambda: False)) == []


def _shown(script, stdout, cmd=()):
    return demo.SHOWN.get(script, demo.plain_lines)(stdout, ['python', script, *cmd])


def test_each_step_shows_a_line_or_two_instead_of_its_json(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, 'ROOT', str(tmp_path))
    eval_out = ('[12/02 00:03:01 INFO] eval: 64/359 images, 350.1 img/s, eta 0:00:01\n'
                '* Acc@1 97.493 Acc@5 100.000 loss 0.258 (359 images)\n' + json.dumps({'acc1': 97.493}) + '\n')
    assert _shown('eval.py', eval_out) == ['* Acc@1 97.493 Acc@5 100.000 loss 0.258 (359 images)']

    labelled = {'class_ids': [3, 9], 'scores': [0.8, 0.1], 'file_name': 'd/3.png', 'label_names': ['three', 'nine']}
    results = [labelled] * 3 + [{'class_ids': [7], 'scores': [0.9], 'file_name': 'd/7.png', 'label_names': []}]
    (tmp_path / 'predictions.json').write_text(json.dumps(results))
    assert _shown('predict.py', json.dumps(results) * 40, ['--output_json', 'predictions.json']) == [
        '4 images, top-1: three 3, 7 1 (all in predictions.json)']

    export_out = 'Statistics collection 100% 64/64\n' + json.dumps({'output': 'out/export', 'files': ['a.json', 'b']})
    assert _shown('export_model.py', export_out) == ['out/export/: a.json, b']
    infer_out = 'benchmark: 359 images, batch 32: ...; 428.7 images/s\n[{"class_ids": [0]}]\n'
    assert _shown('infer.py', infer_out) == ['benchmark: 359 images, batch 32: ...; 428.7 images/s']
    check_out = 'paddle: max |prob diff| 4.2e-07 (atol 1e-05): OK\n{"model_dir": "x"}\n'
    assert _shown('check_export.py', check_out) == ['paddle: max |prob diff| 4.2e-07 (atol 1e-05): OK']


def test_commands_name_the_python_as_the_user_types_it(tmp_path, monkeypatch):
    root = tmp_path / 'repo'
    venv_python = str(root / '.venv' / 'bin' / 'python')
    monkeypatch.setattr(demo.shutil, 'which', lambda name: '/usr/bin/python')
    assert demo.shown_python(venv_python, str(root)) == os.path.join('.venv', 'bin', 'python')
    assert demo.shown_python('/opt/py/bin/python3', str(root)) == '/opt/py/bin/python3'
    monkeypatch.setattr(demo.shutil, 'which', lambda name: venv_python)  # `source .venv/bin/activate`
    assert demo.shown_python(venv_python, str(root)) == 'python'


@pytest.mark.parametrize('python', ['python', '.venv/bin/python'])
def test_next_steps_are_commands_the_scripts_accept(python):
    text = demo.next_steps(python, 'data/digits', 'output/demo/cvt_tiny_demo/checkpoint-best.pd')
    commands = [shlex.split(line.split('  #')[0]) for line in text.splitlines()[1:]]
    assert [c[:2] for c in commands] == [[python, 'predict.py'], [python, 'train.py'], [python, 'eval.py']]
    assert ('source .venv/bin/activate' in text) == (python != 'python')
    predict, train, evaluate = (c[2:] for c in commands)
    script_main('predict.py').__globals__['build_parser']().parse_args(predict)
    parse_args(build_train_parser(), train)
    script_main('eval.py').__globals__['build_parser']().parse_args(evaluate)
    assert 'offline' in text  # the --pretrained tag downloads; the line says where to look without a network


def test_a_step_shows_its_warnings_not_its_info_lines_and_a_failed_one_everything(capsys):
    step = ('import sys; print("[12/02 00:03:01 INFO] val split: 359 images", file=sys.stderr); '
            'print("[12/02 00:03:01 WARNING] a real warning", file=sys.stderr); print("result"); ')
    assert demo.run([sys.executable, '-c', step]) is not None
    out, err = capsys.readouterr()
    assert out.splitlines()[1:] == ['result'] and err.splitlines() == ['[12/02 00:03:01 WARNING] a real warning']
    assert demo.run([sys.executable, '-c', step + 'raise SystemExit(3)'], may_refuse=True) is None
    assert capsys.readouterr().err.splitlines() == ['[12/02 00:03:01 WARNING] a real warning']
    with pytest.raises(ValueError, match=r'demo step failed \(exit 3\)'):
        demo.run([sys.executable, '-c', step + 'raise SystemExit(3)'])
    out, err = capsys.readouterr()
    assert 'result' in out and 'val split' in err


def test_training_under_the_launcher_shows_rank_0s_epoch_lines_and_files_the_rest(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(demo, 'ROOT', str(tmp_path))
    (tmp_path / 'logs').mkdir()
    (tmp_path / 'logs' / 'workerlog.0').write_text('[12/01 10:00:00 INFO] * epoch 0  from an earlier run\n')
    launcher = tmp_path / 'launch.py'  # as paddle.distributed.launch: its own chatter, then rank 0's log in a file
    launcher.write_text('import sys, time\n'
                        'print("LAUNCH INFO 2026-12-01 23:58:12,082 nproc_per_node: 2")\n'
                        'print("UserWarning: No ccache found", file=sys.stderr)\n'
                        'log = open("logs/workerlog.0", "a")\n'
                        'for line in sys.argv[1:]:\n'
                        '    log.write(line + "\\n"); log.flush(); time.sleep(0.05)\n')
    demo.run_training([sys.executable, str(launcher), *WORKER_LOG.splitlines()],
                      output_file='logs/launcher.log', log_file='logs/workerlog.0')
    shown = capsys.readouterr().out.splitlines()
    assert shown[1] == "(output in logs/launcher.log, rank 0's log in logs/workerlog.0)"
    assert [line.split('] ', 1)[1][:9] for line in shown[2:]] == ['* epoch 0', 'epoch 1: ', '* epoch 9', 'done: bes']
    assert 'LAUNCH INFO' in (tmp_path / 'logs' / 'launcher.log').read_text()
    assert 'No ccache found' in (tmp_path / 'logs' / 'launcher.log').read_text()
