"""Durable writes: fsync order around the rename, storage errors as one line, nothing left behind."""
import errno
import os
import subprocess
import sys

import pytest

from cli import run_main
from utils.fileio import StorageError, atomic_write


def _write(path, text):
    with atomic_write(str(path)) as tmp, open(tmp, 'w', encoding='utf-8') as f:
        f.write(text)


def test_file_and_folder_are_fsynced_around_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(('fsync', os.readlink(f'/proc/self/fd/{fd}')))
        real_fsync(fd)

    def replace(src, dst):
        events.append(('replace', str(dst)))
        real_replace(src, dst)
    monkeypatch.setattr(os, 'fsync', fsync)
    monkeypatch.setattr(os, 'replace', replace)
    path = tmp_path / 'args.yaml'
    _write(path, 'a: 1\n')
    assert path.read_text() == 'a: 1\n'
    kinds = [kind for kind, _ in events]
    assert kinds == ['fsync', 'replace', 'fsync']
    assert os.path.dirname(events[0][1]) == str(tmp_path) and events[0][1].endswith('.tmp')  # the temp file
    assert events[2][1] == str(tmp_path)  # then the folder holding the new name


@pytest.mark.parametrize('code', [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_storage_error_names_the_target_and_leaves_no_temp_file(tmp_path, code):
    path = tmp_path / 'log.txt'
    _write(path, 'old\n')
    with pytest.raises(StorageError, match=f'{path}: cannot write .*unchanged') as info:
        with atomic_write(str(path)) as tmp:
            with open(tmp, 'w') as f:
                f.write('half')
            raise OSError(code, os.strerror(code))
    assert info.value.errno == code
    assert path.read_text() == 'old\n'
    assert os.listdir(tmp_path) == ['log.txt']


def test_other_errors_pass_through_unchanged(tmp_path):
    with pytest.raises(ZeroDivisionError):
        with atomic_write(str(tmp_path / 'x')):
            1 / 0
    assert os.listdir(tmp_path) == []


def test_storage_error_is_one_line_from_the_cli(tmp_path, capsys, monkeypatch):
    def main(argv):
        raise StorageError(f'{tmp_path}/checkpoint-latest.pd: cannot write (no space left on the device)')
    with pytest.raises(SystemExit) as exit_info:
        run_main(main, [])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == f'error: {tmp_path}/checkpoint-latest.pd: cannot write ' \
                                      f'(no space left on the device)\n'


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 64 KiB tmpfs (needs root and mount rights; skipped elsewhere, the injected-error tests still run)."""
    mount_point = tmp_path / 'tmpfs'
    mount_point.mkdir()
    if sys.platform != 'linux' or os.geteuid() != 0 or subprocess.run(
            ['mount', '-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', str(mount_point)], capture_output=True).returncode:
        pytest.skip('mounting a tmpfs needs root on Linux')
    yield mount_point
    subprocess.run(['umount', str(mount_point)], check=True)


def test_full_and_read_only_disks_keep_the_previous_file(tiny_tmpfs):
    path = tiny_tmpfs / 'log.txt'
    _write(path, 'old\n')
    with pytest.raises(StorageError, match='no space left'):
        _write(path, 'x' * 200_000)
    assert path.read_text() == 'old\n'
    assert os.listdir(tiny_tmpfs) == ['log.txt']
    subprocess.run(['mount', '-o', 'remount,ro', str(tiny_tmpfs)], check=True)
    with pytest.raises(StorageError, match='read-only file system'):
        _write(path, 'new\n')
    assert path.read_text() == 'old\n'

