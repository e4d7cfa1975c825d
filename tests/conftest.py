"""Test session setup: CPU threads before paddle loads, repo root and tools importable, shared paths."""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / 'tools'))  # a tool's first import, `_bootstrap`, as when it runs as a script

import utils.env  # noqa: E402,F401  (as the scripts: threads, Pillow and a quiet paddle import)

import pytest  # noqa: E402

SHARED_REFERENCE = ROOT.parent / 'shared' / 'reference'


@pytest.fixture(scope='session')
def shared_reference():
    """`../shared/reference` (real ImageNet val image, label list); skips when it is absent."""
    if not SHARED_REFERENCE.is_dir():
        pytest.skip(f'{SHARED_REFERENCE} not present (optional reference material)')
    return SHARED_REFERENCE
