"""Two nodes on loopback (two `paddle.distributed.launch --nnodes 2` launchers, one rank each): ranks that
would resume from different states refuse at once on both nodes; a shared folder or --resume resumes."""
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import paddle
import pytest

import train
from tests.test_train import PLAIN, _log
from training.checkpoint import CheckpointManager

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip('sklearn', reason='the digits dataset comes from scikit-learn (requirements-dev.txt)')
from tools.make_demo_dataset import write_digits_dataset  # noqa: E402

two_nodes_on_loopback = pytest.mark.skipif(
    paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() < 2,
    reason='a CUDA build of paddle launches one worker per GPU; this needs 2 GPUs or a CPU build')

REFUSAL = 'ranks resume from different states'


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """(data, output folder) where run 'run' holds checkpoint-latest.pd at epoch 1 (one finished epoch)."""
    root = tmp_path_factory.mktemp('multinode')
    data = root / 'data'
    write_digits_dataset(str(data), image_size=32, per_class=4, num_classes=2, val_fraction=0.25)
    assert train.main([str(data), '--output', str(root / 'output'), '--experiment', 'run', *PLAIN,
                       '--epochs', '1', '--batch_size', '2', '--lr', '1e-3']) == 0
    return data, root / 'output'


def _gathering(monkeypatch, rows, chosen=(None, None)):
    """Be one of len(rows) ranks that sent `rows`, having chosen `chosen` (or raising it); returns what it sent."""
    sent = []
    monkeypatch.setattr(train, 'get_world_size', lambda: len(rows))
    monkeypatch.setattr(train, 'all_gather_rows', lambda numbers, text: sent.append((tuple(numbers), text)) or rows)

    def checkpoint_to_resume(args, ckpts, identity):
        if isinstance(chosen, Exception):
            raise chosen
        return chosen
    monkeypatch.setattr(train, 'checkpoint_to_resume', checkpoint_to_resume)
    return sent


def _agree(run_dir='/y/run'):
    return train.agreed_checkpoint_to_resume(None, CheckpointManager(str(run_dir)), {})


def test_the_fingerprint_is_the_position_and_the_checkpoints_weights(monkeypatch, tmp_path):
    weights = {'w': np.array([1.0, -2.0], dtype='float32'), 'b': np.array([0.5], dtype='float32')}
    ckpt = {'model': weights, 'epoch': 3, 'step_in_epoch': 7, 'global_step': 67}
    path = str(tmp_path / 'run' / 'checkpoint-latest.pd')
    sent = _gathering(monkeypatch, [((1, 3, 7, 67, 3.5), 'a')] * 2, chosen=(path, ckpt))
    assert _agree(tmp_path / 'run') == (path, ckpt)
    assert sent == [((1, 3, 7, 67, 3.5), f"checkpoint-latest.pd epoch 3 step 7 in {tmp_path / 'run'}")]
    sent = _gathering(monkeypatch, [((0,) * 5, 'b')] * 2)
    assert _agree(tmp_path / 'run') == (None, None)
    assert sent == [((0, 0, 0, 0, 0.0), f"no checkpoint in {tmp_path / 'run'}")]


def test_ranks_are_named_by_group_and_copies_of_one_checkpoint_agree(monkeypatch):
    there, empty = ((1, 1, 0, 3, 9.25), 'checkpoint-latest.pd epoch 1 step 0 in /x/run'), ((0,) * 5, 'no checkpoint')
    _gathering(monkeypatch, [there] * 8 + [empty] * 7 + [there])
    with pytest.raises(ValueError) as refused:
        _agree()
    assert str(refused.value).startswith(f'{REFUSAL} (ranks 0, 1, 2, 3, 4, 5, 6, 7, 15: checkpoint-latest.pd epoch 1 '
                                         f'step 0 in /x/run; ranks 8-14: no checkpoint): --output must be one folder')
    _gathering(monkeypatch, [there, ((1, 1, 0, 3, 9.5), there[1])])  # the same name and position, other weights
    with pytest.raises(ValueError, match=r'\(rank 0: checkpoint-latest.pd epoch 1 step 0 in /x/run \(global step 3, '
                                         r'weights checksum 9.25\); rank 1: .* checksum 9.5\)\)'):
        _agree()
    _gathering(monkeypatch, [there, (there[0], 'copy.pd epoch 1 step 0 in /y')])  # --resume on every node
    _agree()


def test_a_rank_that_cannot_resume_stops_the_others_with_its_reason(monkeypatch):
    missing = FileNotFoundError('/y/ckpt.pd: no such file')
    sent = _gathering(monkeypatch, [((0,) * 5, 'no checkpoint in /x/run'), (train._NO_RESUME, str(missing))],
                      chosen=missing)
    with pytest.raises(FileNotFoundError):  # its own error, after telling the others
        _agree()
    assert sent == [(train._NO_RESUME, '/y/ckpt.pd: no such file')]
    _gathering(monkeypatch, [((0,) * 5, 'no checkpoint in /x/run'), (train._NO_RESUME, str(missing))])
    with pytest.raises(ValueError, match=r'^rank 1 cannot resume: /y/ckpt.pd: no such file$'):
        _agree()


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _two_nodes(tmp_path, flags_of_node):
    """Start node 0 and node 1 (each a launcher with one rank) on loopback; returns the two launchers."""
    env = {k: v for k, v in os.environ.items() if k != 'CUDA_VISIBLE_DEVICES'}  # a set value means GPU jobs
    master = f'127.0.0.1:{_free_port()}'
    return [subprocess.Popen([sys.executable, '-m', 'paddle.distributed.launch', '--nnodes', '2', '--master', master,
                              '--rank', str(node), '--nproc_per_node', '1', '--log_dir', str(tmp_path / f'node{node}'),
                              'train.py', *flags_of_node(node)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL) for node in (0, 1)]


def _running_with(text):
    """PIDs of live processes whose command line mentions `text` (ranks run in sessions of their own)."""
    rows = subprocess.run(['ps', '-eo', 'pid=,stat=,args='], capture_output=True, text=True).stdout.splitlines()
    return [int(row.split()[0]) for row in rows if text in row and row.split()[1][0] != 'Z']


def _worker_log(tmp_path, node):
    return ''.join(p.read_text() for p in sorted((tmp_path / f'node{node}').glob('workerlog.*')))


@pytest.mark.slow
@two_nodes_on_loopback
def test_separate_output_folders_refuse_on_both_nodes_within_seconds(trained, tmp_path):
    data, output = trained
    folders = [output, tmp_path / 'empty']  # node 0 holds the checkpoint, node 1 has nothing
    before = sorted(p.name for p in (output / 'run').iterdir())
    nodes = _two_nodes(tmp_path, lambda node: [str(data), '--output', str(folders[node]), '--experiment', 'run',
                                               *PLAIN, '--epochs', '2', '--batch_size', '2', '--lr', '1e-3'])
    try:
        codes = [node.wait(timeout=60) for node in nodes]  # generous: the refusal itself takes a collective
    finally:
        for node in nodes:
            node.kill()
    assert all(code != 0 for code in codes), codes
    expected = (f"{REFUSAL} (rank 0: checkpoint-latest.pd epoch 1 step 0 in {output / 'run'}; rank 1: no checkpoint "
                f"in {tmp_path / 'empty' / 'run'}): --output must be one folder shared by all nodes, or pass "
                f"--resume PATH on every node")
    for node in (0, 1):
        log = _worker_log(tmp_path, node)
        assert [line for line in log.splitlines() if REFUSAL in line] == [f'error: {expected}'], log[-3000:]
        assert 'Epoch: [' not in log
    assert not _running_with(str(data))  # no launcher, rank or loader worker of either node is left
    assert sorted(p.name for p in (output / 'run').iterdir()) == before  # no lock, args.yaml or log written
    assert not (tmp_path / 'empty' / 'run').exists()


@pytest.mark.slow
@two_nodes_on_loopback
def test_a_shared_output_folder_or_resume_on_every_node_resumes(trained, tmp_path):
    data, output = trained
    shared = tmp_path / 'shared'
    shutil.copytree(output, shared)
    latest, copy = output / 'run' / 'checkpoint-latest.pd', tmp_path / 'copy-on-node1.pd'
    shutil.copy(latest, copy)  # node 1's own copy of the checkpoint, named otherwise
    runs = {'shared': (lambda node: ['--output', str(shared)], shared / 'run' / 'checkpoint-latest.pd'),
            'resume': (lambda node: ['--output', str(tmp_path / f'out{node}'),
                                     '--resume', str(copy if node else latest)], latest)}
    jobs = {name: _two_nodes(tmp_path / name, lambda node, where=where: [
        str(data), *where(node), '--experiment', 'run', *PLAIN, '--epochs', '2', '--batch_size', '2', '--lr', '1e-3'])
        for name, (where, _) in runs.items()}  # both jobs at once: they spend most of their time starting
    try:
        codes = {name: [node.wait(timeout=180) for node in nodes] for name, nodes in jobs.items()}
    finally:
        for node in (node for nodes in jobs.values() for node in nodes):
            node.kill()
    for name, (_, resumed) in runs.items():
        log = _worker_log(tmp_path / name, 0)  # rank 1 logs warnings and errors only
        assert codes[name] == [0, 0], log[-3000:] + _worker_log(tmp_path / name, 1)[-3000:]
        assert f'resumed from {resumed} at epoch 1 step 0' in log and 'Epoch: [0]' not in log
        assert 'Epoch: [1]' in log and 'identical on all 2 ranks' in log  # rank 1 trained from the same state
    assert [r['epoch'] for r in _log(shared / 'run')] == [0, 1]
