"""cli.py: one image flag under three spellings in every script."""
import runpy

import pytest

from tests.scripts import ROOT


@pytest.mark.parametrize('script, required', [('predict.py', ['--model', 'cvt_tiny']),
                                              ('infer.py', ['--model_dir', 'export']),
                                              ('tools/check_export.py', ['--model_dir', 'export'])])
@pytest.mark.parametrize('flag', ['--images', '--infer_imgs', '--input_file'])
def test_every_image_script_takes_every_spelling(script, required, flag):
    args = runpy.run_path(str(ROOT / script))['build_parser']().parse_args([*required, flag, 'a.png', 'dir/'])
    assert args.images == ['a.png', 'dir/']
