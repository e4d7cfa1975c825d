"""Two nodes on loopback (two `paddle.distributed.launch --nnodes 2` launchers, one rank each): ranks that
would resume from different states refuse at once on both nodes; a shared folder or --resume resumes."""
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import paddle
import pytest

import train
from tests.test_train import PLAIN, _alive, _descendants, _log

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip('sklearn', reason='the digits dataset comes from scikit-learn (requirements-dev.txt)')
from tools.make_demo_dataset import write_digits_dataset  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() < 2,
    reason='a CUDA build of paddle launches one worker per GPU; this needs 2 GPUs or a CPU build')]

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


def _worker_log(tmp_path, node):
    return ''.join(p.read_text() for p in sorted((tmp_path / f'node{node}').glob('workerlog.*')))


def test_separate_output_folders_refuse_on_both_nodes_within_seconds(trained, tmp_path):
    data, output = trained
    folders = [output, tmp_path / 'empty']  # node 0 holds the checkpoint, node 1 has nothing
    before = sorted(p.name for p in (output / 'run').iterdir())
    nodes = _two_nodes(tmp_path, lambda node: [str(data), '--output', str(folders[node]), '--experiment', 'run',
                                               *PLAIN, '--epochs', '2', '--batch_size', '2', '--lr', '1e-3'])
    started = [pid for node in nodes for pid in _descendants(node.pid)]
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
    assert not _alive(started)
    assert sorted(p.name for p in (output / 'run').iterdir()) == before  # no lock, args.yaml or log written
    assert not (tmp_path / 'empty' / 'run').exists()


def test_a_shared_output_folder_or_resume_on_every_node_resumes(trained, tmp_path):
    data, output = trained
    shared = tmp_path / 'shared'
    shutil.copytree(output, shared)
    copy = tmp_path / 'copy-on-node1.pd'  # node 1's own copy of the checkpoint, named otherwise
    shutil.copy(output / 'run' / 'checkpoint-latest.pd', copy)
    latest = output / 'run' / 'checkpoint-latest.pd'
    runs = {'shared': (lambda node: ['--output', str(shared)], shared / 'run' / 'checkpoint-latest.pd'),
            'resume': (lambda node: ['--output', str(tmp_path / f'out{node}'), '--resume', str(copy if node else latest)],
                       latest)}
    for name, (where, resumed) in runs.items():
        logs = tmp_path / name
        nodes = _two_nodes(logs, lambda node: [str(data), *where(node), '--experiment', 'run', *PLAIN,
                                               '--epochs', '2', '--batch_size', '2', '--lr', '1e-3'])
        try:
            codes = [node.wait(timeout=120) for node in nodes]
        finally:
            for node in nodes:
                node.kill()
        log = _worker_log(logs, 0)  # rank 1 logs warnings and errors only
        assert codes == [0, 0], log[-3000:] + _worker_log(logs, 1)[-3000:]
        assert f'resumed from {resumed} at epoch 1 step 0' in log and 'Epoch: [0]' not in log
        assert 'Epoch: [1]' in log and 'identical on all 2 ranks' in log  # rank 1 trained from the same state
    assert [r['epoch'] for r in _log(shared / 'run')] == [0, 1]
