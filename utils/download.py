"""Download a file once into a local cache (atomic write, optional sha256 check), with urllib only."""
import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from typing import Optional

from tqdm import tqdm

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


def _fetch(url: str, dst: str, sha256: Optional[str], progress: bool) -> None:
    """Stream `url` into a temp file next to `dst`, check its hash, then rename it into place."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(dst), prefix='.' + os.path.basename(dst), suffix='.part')
    try:
        digest, received = hashlib.sha256(), 0
        with os.fdopen(fd, 'wb') as out, urllib.request.urlopen(url, timeout=60) as response:
            total = int(response.headers.get('Content-Length') or 0) or None
            with tqdm(total=total, unit='B', unit_scale=True, unit_divisor=1024, disable=not progress,
                      desc=os.path.basename(dst)) as bar:
                for chunk in iter(lambda: response.read(_CHUNK), b''):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
        if total and received != total:
            raise ConnectionError(f'got {received} of {total} bytes')
        got = digest.hexdigest()
        if sha256 and got != sha256.lower():
            raise ValueError(f'{url}: sha256 mismatch, expected {sha256.lower()}, got {got}')
        os.replace(tmp, dst)
    except urllib.error.HTTPError as err:
        if err.code in (404, 410):
            raise FileNotFoundError(f'{url}: HTTP {err.code} {err.reason}') from None
        raise ConnectionError(f'{url}: download failed (HTTP {err.code} {err.reason})') from None
    except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as err:
        reason = getattr(err, 'reason', None) or err
        raise ConnectionError(f'{url}: download failed ({reason})') from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def download_url(url: str, cache_dir: Optional[str] = None, sha256: Optional[str] = None,
                 progress: bool = True) -> str:
    """Return the local path of `url`, downloading it into the cache on first use.

    A cached file is reused without network access; with `sha256` it is checked first and fetched
    again when it does not match. A download whose hash does not match is deleted and raises.
    """
    dst = cache_path(url, cache_dir)
    if os.path.isfile(dst) and (not sha256 or file_sha256(dst) == sha256.lower()):
        return dst
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    _fetch(url, dst, sha256, progress)
    return dst
