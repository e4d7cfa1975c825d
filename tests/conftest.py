"""Test session setup: CPU threads before paddle loads, repo root importable, shared paths."""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from utils.env import configure_cpu_runtime  # noqa: E402

configure_cpu_runtime()

import pytest  # noqa: E402

SHARED_REFERENCE = ROOT.parent / 'shared' / 'reference'


@pytest.fixture(scope='session')
def shared_reference():
    """`../shared/reference` (real ImageNet val image, label list); skips when it is absent."""
    if not SHARED_REFERENCE.is_dir():
        pytest.skip(f'{SHARED_REFERENCE} not present (optional reference material)')
    return SHARED_REFERENCE
