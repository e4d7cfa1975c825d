"""Download a file once into a local cache (atomic write, optional sha256 check, no leftovers), with urllib only."""
import hashlib
import http.client
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import List, Optional

from tqdm import tqdm

from utils.fileio import atomic_write

_CHUNK = 1 << 20


def default_cache_dir() -> str:
    """`$CVT_CACHE_DIR`, else `~/.cache/cvt_paddle`."""
    return os.environ.get('CVT_CACHE_DIR') or os.path.join(os.path.expanduser('~'), '.cache', 'cvt_paddle')


def cache_path(url: str, cache_dir: Optional[str] = None) -> str:
    """Where `url` is cached: `<cache_dir>/<host>/<url path>`, so equal file names on
    different repositories (every Hugging Face `pytorch_model.bin`) do not collide."""
    parsed = urllib.parse.urlsplit(url)
    parts = [p for p in urllib.parse.unquote(parsed.path).split('/') if p not in ('', '.', '..')]
    if parsed.scheme not in ('http', 'https') or not parsed.hostname or not parts:
        raise ValueError(f"{url}: expected an http(s) URL ending in a file name")
    return os.path.join(cache_dir or default_cache_dir(), parsed.hostname, *parts)


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as file:
        for chunk in iter(lambda: file.read(_CHUNK), b''):
            digest.update(chunk)
    return digest.hexdigest()


class DownloadError(ConnectionError):
    """A download that failed for a network reason; `url` and `reason` let a caller say what to do next."""

    def __init__(self, url: str, reason: str):
        super().__init__(f'{url}: download failed ({reason})')
        self.url, self.reason = url, reason


def _open(url: str):
    """The HTTP response for `url`; a missing file is FileNotFoundError, any other failure a DownloadError."""
    try:
        return urllib.request.urlopen(url, timeout=60)
    except urllib.error.HTTPError as err:
        if err.code in (404, 410):
            raise FileNotFoundError(f'{url}: HTTP {err.code} {err.reason}') from None
        raise DownloadError(url, f'HTTP {err.code} {err.reason}') from None
    except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as err:
        raise DownloadError(url, str(getattr(err, 'reason', None) or err)) from None


def _folders_to_create(path: str) -> List[str]:
    """The folders that writing `path` creates, deepest first."""
    folders, folder = [], os.path.dirname(os.path.abspath(path))
    while not os.path.isdir(folder):
        folders.append(folder)
        folder = os.path.dirname(folder)
    return folders


def _remove_empty(folders: List[str]) -> None:
    for folder in folders:  # deepest first; stop at the first one something else has written into
        try:
            os.rmdir(folder)
        except OSError:
            return


def _fetch(url: str, dst: str, sha256: Optional[str], progress: bool) -> None:
    """Stream `url` into `dst` through `atomic_write`, checking its length and hash before it takes the name.

    The connection is opened before any folder is made, and a failure later removes the folders this
    download created, so a failed download leaves the cache as it was.
    """
    response = _open(url)
    new_folders = _folders_to_create(dst)
    try:
        with response, atomic_write(dst) as tmp, open(tmp, 'wb') as out:
            digest, received = hashlib.sha256(), 0
            total = int(response.headers.get('Content-Length') or 0) or None
            with tqdm(total=total, unit='B', unit_scale=True, unit_divisor=1024, disable=not progress,
                      desc=os.path.basename(dst)) as bar:
                for chunk in iter(lambda: response.read(_CHUNK), b''):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            if total and received != total:
                raise DownloadError(url, f'got {received} of {total} bytes')
            got = digest.hexdigest()
            if sha256 and got != sha256.lower():
                raise ValueError(f'{url}: sha256 mismatch, expected {sha256.lower()}, got {got}')
    except BaseException as err:
        _remove_empty(new_folders)
        if isinstance(err, (TimeoutError, ConnectionError, http.client.HTTPException)) \
                and not isinstance(err, DownloadError):  # the connection broke mid-stream
            raise DownloadError(url, str(err)) from None
        raise


def download_url(url: str, cache_dir: Optional[str] = None, sha256: Optional[str] = None,
                 progress: bool = True) -> str:
    """Return the local path of `url`, downloading it into the cache on first use.

    A cached file is reused without network access; with `sha256` it is checked first and fetched
    again when it does not match. A download whose hash does not match is deleted and raises.
    """
    dst = cache_path(url, cache_dir)
    if os.path.isfile(dst) and (not sha256 or file_sha256(dst) == sha256.lower()):
        return dst
    _fetch(url, dst, sha256, progress)
    return dst
