"""The READMEs' shell commands name scripts, flags and make targets that exist, so docs cannot drift."""
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
READMES = [p for p in (ROOT / 'README.md', ROOT / 'README_cn.md') if p.exists()]


def shell_commands(text: str):
    """(line number, command) for each command in ```bash blocks, backslash continuations joined."""
    commands, in_block, pending, start = [], False, '', 0
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith('```'):
            in_block = line.strip() == '```bash'
            continue
        if not in_block:
            continue
        if pending and line.lstrip().startswith('#'):
            raise AssertionError(f'line {number}: a comment inside a backslash continuation breaks the command')
        start = start if pending else number
        pending += line.rstrip('\\').strip() + ' ' if line.endswith('\\') else line.strip()
        if not line.endswith('\\'):
            if pending.strip() and not pending.lstrip().startswith('#'):
                commands.append((start, pending.strip()))
            pending = ''
    assert not pending, 'a bash block ends inside a backslash continuation'
    return commands


def script_and_flags(tokens):
    """(script, its flags) for `python x.py ...` and `python -m paddle.distributed.launch ... x.py ...` (or
    `python tools/launch.py ... x.py ...`, which takes the launcher's flags)."""
    if not tokens or tokens[0] not in ('python', 'python3'):
        return None, []
    script_at = next((i for i, t in enumerate(tokens) if t.endswith('.py') and t != 'tools/launch.py'), None)
    if script_at is None:
        return None, []
    flags = [t.split('=')[0] for t in tokens[script_at + 1:] if t.startswith('--')]
    return tokens[script_at], flags


def _help_flags(script: str):
    out = subprocess.run([sys.executable, script, '--help'], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f'{script} --help failed: {out.stderr[-500:]}'
    return set(re.findall(r'--[a-z0-9_]+', out.stdout))


@pytest.fixture(scope='module')
def readme_commands():
    return [(readme.name, line, shlex.split(cmd, comments=True)) for readme in READMES
            for line, cmd in shell_commands(readme.read_text(encoding='utf-8'))]


def test_readme_shows_the_two_commands_first():
    text = (ROOT / 'README.md').read_text(encoding='utf-8')
    first_block = text.split('```bash', 1)[1].split('```', 1)[0]
    assert re.search(r'^make demo\b', first_block, re.M) and re.search(r'^make test\b', first_block, re.M)


def test_every_script_and_flag_in_the_readmes_exists(readme_commands):
    wanted = {}
    for name, line, tokens in readme_commands:
        script, flags = script_and_flags(tokens)
        if script:
            assert (ROOT / script).is_file(), f'{name}:{line}: {script} does not exist'
            wanted.setdefault(script, []).append((name, line, flags))
    assert {'train.py', 'eval.py', 'predict.py', 'export_model.py', 'infer.py'} <= set(wanted)
    with ThreadPoolExecutor(max_workers=4) as pool:
        known = dict(zip(wanted, pool.map(_help_flags, wanted)))
    for script, uses in wanted.items():
        for name, line, flags in uses:
            unknown = [f for f in flags if f not in known[script]]
            assert not unknown, f'{name}:{line}: {script} has no flag(s) {unknown}'


def test_make_targets_in_the_readmes_exist(readme_commands):
    makefile = (ROOT / 'Makefile').read_text()
    targets = {tokens[1] for _, _, tokens in readme_commands if tokens[:1] == ['make'] and len(tokens) > 1}
    assert {'demo', 'test'} <= targets
    for target in targets:
        assert re.search(rf'^{re.escape(target)}:', makefile, re.M), f'make {target}: no such Makefile target'


def test_continuation_comments_are_caught():
    with pytest.raises(AssertionError, match='comment inside a backslash continuation'):
        shell_commands('```bash\npython train.py \\\n# the data\n  /data\n```\n')
    assert shell_commands('```bash\npython train.py \\\n  /data --lr 1  # absolute\n```\n') == [
        (2, 'python train.py /data --lr 1  # absolute')]


def test_the_readmes_export_folder_is_ignored_by_git(readme_commands):
    if subprocess.run(['git', 'rev-parse'], cwd=ROOT, capture_output=True).returncode:
        pytest.skip('not a git checkout')
    exports = {tokens[tokens.index('--output') + 1].split('/')[0] for _, _, tokens in readme_commands
               if 'export_model.py' in tokens and '--output' in tokens}
    assert exports == {'inference'}
    ignored = subprocess.run(['git', 'check-ignore', '-q', 'inference/cvt_13_224x224/inference.pdiparams'], cwd=ROOT)
    assert ignored.returncode == 0
