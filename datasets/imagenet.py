"""ImageNet-layout datasets: class folders (`DATA_DIR/<split>/<class>/*`) or PaddleClas list files.

Both check the data at start-up and fail with one line naming the file, and both replace
unreadable images by the next sample (counted, see `num_replaced`) or raise, by policy.
"""
import multiprocessing
import os
import random
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import paddle
from PIL import Image

from utils.logger import get_logger

from .transforms import to_rgb

logger = get_logger(__name__)

# The extensions torchvision's ImageFolder accepts, matched case-insensitively (ImageNet uses .JPEG); an
# animated .gif is read as its first frame (what PIL decodes on open).
IMG_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif', '.tiff', '.webp', '.gif')
BAD_IMAGE_POLICIES = ('skip', 'error')
# More consecutive unreadable files than this means a broken mount or path, not a few bad images.
MAX_CONSECUTIVE_BAD = 16
# File-system calls release the GIL, so threads overlap the per-file latency of network storage.
IO_THREADS = 32


def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def load_rgb(path: str) -> Image.Image:
    """Decode an image file as 3-channel RGB (grayscale, CMYK, palette, alpha, 16-bit: see to_rgb)."""
    with Image.open(path) as img:
        img.load()  # decode now, so a corrupt file fails here rather than inside a transform
        # Older Pillow frees the pixels on close, so an image already in RGB is copied out.
        return img.copy() if img.mode == 'RGB' else to_rgb(img)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f'{type(exc).__name__}: {text[0]}' if text else type(exc).__name__


class ImageDataset(paddle.io.Dataset):
    """Image paths (relative to `root`) with integer labels; `dataset[i]` is (image, label).

    `num_classes` is the largest label + 1 (subclasses know better: folder count, given value).
    `classes` is the class names by label (folder names), or None when the data has none (list files).

    The image is `transform(PIL RGB image)` (a float32 CHW array for the project's transforms),
    or the HWC uint8 array when `transform` is None.
    """
    classes: Optional[List[str]] = None

    def __init__(self, root: str, rel_paths: Sequence[str], labels: Sequence[int],
                 transform: Optional[Callable] = None, bad_image_policy: str = 'skip'):
        super().__init__()
        if bad_image_policy not in BAD_IMAGE_POLICIES:
            raise ValueError(f"bad_image_policy: expected one of {BAD_IMAGE_POLICIES}, found {bad_image_policy!r}")
        self.root = root
        # Byte strings in one numpy array rather than a list of str: forked loader workers then share
        # the pages instead of copying them one by one as reference counts change.
        self._rel_paths = np.array([os.fsencode(p) for p in rel_paths], dtype=np.bytes_)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.num_classes = int(self.labels.max()) + 1 if len(self.labels) else 0
        self.transform = transform
        self.bad_image_policy = bad_image_policy
        # Shared memory, so replacements made inside DataLoader worker processes are counted too,
        # and under the 'error' policy the first failure reaches the main process (see raise_if_failed).
        self._num_replaced = multiprocessing.Value('q', 0)
        self._first_error = multiprocessing.Array('c', 2048)

    def __len__(self) -> int:
        return len(self.labels)

    def path(self, index: int) -> str:
        return os.path.join(self.root, os.fsdecode(self._rel_paths[index]))

    @property
    def num_replaced(self) -> int:
        """Unreadable images replaced so far, over all worker processes (never reset)."""
        return int(self._num_replaced.value)

    def __getitem__(self, index) -> Tuple[np.ndarray, int]:
        """`index` is an int, or (index, seed) from a train sampler: the transform's RNGs are then
        seeded with it, so a sample's augmentation does not depend on the process that reads it."""
        if isinstance(index, tuple):
            index, seed = index
            random.seed(seed)
            np.random.seed(seed)
        for step in range(MAX_CONSECUTIVE_BAD + 1):
            i = (int(index) + step) % len(self)
            path = self.path(i)
            try:
                img = load_rgb(path)
            # PIL reports corrupt files with many exception types (OSError, SyntaxError, struct.error,
            # DecompressionBombError, ...); only decoding is guarded, transform errors still raise.
            except Exception as exc:  # noqa: BLE001
                self._on_bad_image(path, exc)
                continue
            image = self.transform(img) if self.transform is not None else np.asarray(img)
            return image, int(self.labels[i])
        raise ValueError(f'{self.path(index)}: this and the next {MAX_CONSECUTIVE_BAD} images are unreadable; '
                         f'check that {self.root} is complete and mounted')

    def raise_if_failed(self) -> None:
        """Under the 'error' policy, raise the first unreadable image's one-line error, in the calling process.

        Workers only record it (an exception inside a Paddle loader worker surfaces as a thread dump and
        a "blocking queue is killed" error), so the loader calls this after every batch.
        """
        if self._first_error.value:
            raise ValueError(self._first_error.value.decode(errors='replace'))

    def _on_bad_image(self, path: str, exc: Exception) -> None:
        if self.bad_image_policy == 'error':
            message = f'{path}: unreadable image ({_one_line(exc)}); replace or remove that file'
            with self._first_error.get_lock():
                if not self._first_error.value:
                    self._first_error.value = message.encode()[:2047]
            return
        with self._num_replaced.get_lock():
            self._num_replaced.value += 1
        logger.warning('%s: unreadable image (%s), replaced by the next sample', path, _one_line(exc))


class ImageFolderDataset(ImageDataset):
    """`root/split/<class>/**/<image>`; labels are indices of the sorted class-folder names
    (for ImageNet: sorted wnids, the official label order).

    With `class_names` (the names a model was trained on, from `names_of`), the folders must carry
    exactly those names: labels are positions, so a renamed folder would silently shift them.
    """

    def __init__(self, root: str, split: str, transform: Optional[Callable] = None,
                 num_classes: Optional[int] = None, bad_image_policy: str = 'skip',
                 class_names: Optional[Sequence[str]] = None, names_of: str = 'the training data'):
        split_dir = os.path.join(root, split)
        if not os.path.isdir(split_dir):
            raise FileNotFoundError(f'{split_dir}: split folder not found (expected {root}/{split}/<class>/<images>)')
        self.classes = _class_folders(split_dir)
        if class_names is not None:
            check_class_names(split_dir, self.classes, class_names, names_of)
        if num_classes is not None and len(self.classes) != num_classes:
            raise ValueError(f'{split_dir}: found {len(self.classes)} class folders, expected {num_classes} '
                             f'(num_classes); labels are sorted-folder indices, so every split needs every class')
        rel_paths, labels = [], []
        for label, files in enumerate(_scan_class_folders(split_dir, self.classes)):
            rel_paths += files
            labels += [label] * len(files)
        super().__init__(split_dir, rel_paths, labels, transform, bad_image_policy)
        self.num_classes = len(self.classes)


def check_class_names(split_dir: str, found: Sequence[str], expected: Sequence[str], names_of: str,
                      fix: Optional[str] = None) -> None:
    """Refuse class folders whose names differ from `expected`, naming the first differing folder; `fix`
    says what to do (default: a val split's remedies)."""
    if list(found) == list(expected):
        return
    shown = ', '.join(expected[:10]) + (f', ... ({len(expected)} classes)' if len(expected) > 10 else '')
    extra = sorted(set(found) - set(expected))
    if extra:
        raise ValueError(f'{os.path.join(split_dir, extra[0])} is not a class of {names_of} (it has {shown}): '
                         f'{fix or "rename it or pass --cls_label_path_val FILE"}')
    missing = sorted(set(expected) - set(found))
    if missing:
        raise ValueError(f'{split_dir}: no folder for class {missing[0]} of {names_of} (it has {shown}): '
                         f'{fix or "every split needs every class; add it or pass --cls_label_path_val FILE"}')
    raise ValueError(f'{split_dir}: the class folders sort in another order than the classes of {names_of} '
                     f'({shown}), so labels would differ: {fix or "pass --cls_label_path_val FILE"}')


def _class_folders(split_dir: str) -> List[str]:
    entries = sorted(os.scandir(split_dir), key=lambda e: e.name)
    classes = [e.name for e in entries if e.is_dir() and not e.name.startswith('.')]
    if not classes:
        loose = sum(1 for e in entries if e.is_file() and is_image_file(e.name))
        hint = (f'; its {loose} images lie directly in it: sort them into <class>/ folders or pass a list file'
                if loose else '')
        raise ValueError(f'{split_dir}: no class folders found (expected <class>/<images>){hint}')
    return classes


def _scan_class_folders(split_dir: str, classes: Sequence[str]) -> List[List[str]]:
    with ThreadPoolExecutor(max_workers=min(IO_THREADS, len(classes))) as pool:
        per_class = list(pool.map(lambda c: _image_files(split_dir, c), classes))
    for name, files in zip(classes, per_class):
        if not files:
            raise ValueError(f'{os.path.join(split_dir, name)}: class folder has no images '
                             f'(expected files ending in {", ".join(IMG_EXTENSIONS)}, any case)')
    return per_class


def _image_files(split_dir: str, class_name: str) -> List[str]:
    """Image paths under one class folder (recursive, sorted), relative to `split_dir`."""
    found, pending = [], [class_name]
    while pending:
        rel_dir = pending.pop()
        for entry in os.scandir(os.path.join(split_dir, rel_dir)):
            rel = os.path.join(rel_dir, entry.name)
            if entry.is_dir():
                pending.append(rel)
            elif is_image_file(entry.name):
                found.append(rel)
    return sorted(found)


class ImageListDataset(ImageDataset):
    """PaddleClas list file: one `relative/path label` per line, paths relative to `root`.

    The label follows the last whitespace, so paths may contain spaces; blank lines are ignored.
    """

    def __init__(self, root: str, list_file: str, transform: Optional[Callable] = None,
                 num_classes: Optional[int] = None, bad_image_policy: str = 'skip'):
        rel_paths, labels = parse_list_file(list_file, num_classes)
        if not rel_paths:
            raise ValueError(f"{list_file}: empty dataset (expected '<relative/path> <integer label>' lines)")
        _check_files_exist(root, rel_paths, list_file)
        self.list_file = list_file
        super().__init__(root, rel_paths, labels, transform, bad_image_policy)
        if num_classes is not None:
            self.num_classes = num_classes


def parse_list_file(list_file: str, num_classes: Optional[int] = None) -> Tuple[List[str], List[int]]:
    """(paths, labels) from a `path label` list file; bad lines raise naming `file:line`.

    Without `num_classes` the class count is the largest label + 1, so labels that skip ids (a typo: 7
    among 0-2) are refused at the first line holding a label past the gap: they would add empty classes.
    """
    rel_paths, labels, first_line = [], [], {}
    with open(list_file, encoding='utf-8') as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            parts = line.strip().rsplit(None, 1)
            if len(parts) != 2 or not parts[1].lstrip('-').isdigit():
                raise ValueError(f"{list_file}:{lineno}: expected '<relative/path> <integer label>', "
                                 f"found {line.strip()!r}")
            label = int(parts[1])
            if label < 0 or (num_classes is not None and label >= num_classes):
                bound = f'[0, {num_classes})' if num_classes is not None else 'a label >= 0'
                raise ValueError(f'{list_file}:{lineno}: label {label} outside {bound} (num_classes)')
            rel_paths.append(parts[0])
            labels.append(label)
            first_line.setdefault(label, lineno)
    if num_classes is None and first_line and len(first_line) != max(first_line) + 1:
        gap = min(set(range(max(first_line) + 1)) - set(first_line))
        odd = min(label for label in first_line if label > gap)
        raise ValueError(f'{list_file}:{first_line[odd]}: label {odd}, but no line has label {gap}: labels must be '
                         f'0..N-1 without gaps; fix the label, or pass --num_classes {max(first_line) + 1} if the '
                         f'missing ids are meant to be classes without images')
    return rel_paths, labels


def _check_files_exist(root: str, rel_paths: Sequence[str], list_file: str) -> None:
    # One stat per entry is slow on network storage (1.28M entries for ImageNet train); threads
    # overlap the round trips because os.path.exists releases the GIL. Chunks, because a future
    # per path costs more than a local stat.
    chunks = [rel_paths[i:i + 1024] for i in range(0, len(rel_paths), 1024)]
    with ThreadPoolExecutor(max_workers=IO_THREADS) as pool:
        per_chunk = pool.map(lambda chunk: [p for p in chunk if not os.path.exists(os.path.join(root, p))], chunks)
    missing = [p for chunk in per_chunk for p in chunk]
    if missing:
        shown = ', '.join(missing[:3]) + (', ...' if len(missing) > 3 else '')
        raise FileNotFoundError(f'{list_file}: {len(missing)} of {len(rel_paths)} listed files not found '
                                f'under {root}: {shown}')


def build_dataset(data_dir: str, split: str, transform: Optional[Callable] = None,
                  list_file: Optional[str] = None, num_classes: Optional[int] = None,
                  bad_image_policy: str = 'skip', class_names: Optional[Sequence[str]] = None,
                  names_of: str = 'the training data') -> ImageDataset:
    """`data_dir/split` class folders, or `list_file` entries (relative to `data_dir`) when given.

    A relative `list_file` that does not exist as given is looked up in `data_dir`. Class folders must
    be named `class_names` when given (see ImageFolderDataset); a list file has no names to compare.
    """
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f'{data_dir}: data directory not found')
    if list_file is None:
        dataset = ImageFolderDataset(data_dir, split, transform, num_classes, bad_image_policy, class_names,
                                     names_of)
        source = dataset.root
    else:
        source = _resolve_list_file(data_dir, list_file)
        dataset = ImageListDataset(data_dir, source, transform, num_classes, bad_image_policy)
    logger.info('%s split: %d images from %s', split, len(dataset), source)
    return dataset


def _resolve_list_file(data_dir: str, list_file: str) -> str:
    if os.path.isfile(list_file):
        return list_file
    in_data_dir = os.path.join(data_dir, list_file)
    if not os.path.isabs(list_file) and os.path.isfile(in_data_dir):
        return in_data_dir
    raise FileNotFoundError(f'{list_file}: list file not found (also looked in {data_dir})')


def read_label_names(path: str) -> List[str]:
    """Class names from an `id name` file (ids 0, 1, 2, ... in order; names may contain spaces)."""
    names = []
    with open(path, encoding='utf-8') as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            parts = line.strip().split(None, 1)
            if len(parts) != 2 or parts[0] != str(len(names)):
                raise ValueError(f"{path}:{lineno}: expected '{len(names)} <class name>', found {line.strip()!r}")
            names.append(parts[1])
    if not names:
        raise ValueError(f"{path}: no labels found (expected 'id name' lines)")
    return names
