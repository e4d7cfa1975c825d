"""utils/download.py against a local HTTP server: download once, cache, sha256 check, no leftovers."""
import hashlib
import http.server
import threading

import pytest

from utils.download import cache_path, download_url

PAYLOAD = b'cvt weights ' * 5000


class _Handler(http.server.BaseHTTPRequestHandler):
    hits = []

    def do_GET(self):
        type(self).hits.append(self.path)
        if self.path != '/models/cvt-13/resolve/main/pytorch_model.bin':
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header('Content-Length', str(len(PAYLOAD)))
        self.end_headers()
        self.wfile.write(PAYLOAD)

    def log_message(self, *args):  # keep the test output clean
        pass


@pytest.fixture
def server(monkeypatch):
    for name in ('http_proxy', 'HTTP_PROXY', 'all_proxy', 'ALL_PROXY'):  # talk to 127.0.0.1 directly
        monkeypatch.delenv(name, raising=False)
    _Handler.hits = []
    httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs=dict(poll_interval=0.05), daemon=True)
    thread.start()
    yield f'http://127.0.0.1:{httpd.server_address[1]}'
    httpd.shutdown()
    httpd.server_close()


def _files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob('*') if p.is_file())


def test_downloads_once_then_serves_from_cache(server, tmp_path):
    url = f'{server}/models/cvt-13/resolve/main/pytorch_model.bin'
    sha = hashlib.sha256(PAYLOAD).hexdigest()
    first = download_url(url, cache_dir=str(tmp_path), sha256=sha, progress=True)  # no tty under pytest
    second = download_url(url, cache_dir=str(tmp_path), sha256=sha)
    assert first == second == cache_path(url, str(tmp_path))
    assert first.endswith('127.0.0.1/models/cvt-13/resolve/main/pytorch_model.bin')
    assert open(first, 'rb').read() == PAYLOAD
    assert len(_Handler.hits) == 1
    assert _files(tmp_path) == ['127.0.0.1/models/cvt-13/resolve/main/pytorch_model.bin']


def test_cache_dir_from_environment(server, tmp_path, monkeypatch):
    monkeypatch.setenv('CVT_CACHE_DIR', str(tmp_path / 'env_cache'))
    path = download_url(f'{server}/models/cvt-13/resolve/main/pytorch_model.bin', progress=False)
    assert path.startswith(str(tmp_path / 'env_cache'))


def test_sha256_mismatch_raises_and_leaves_nothing(server, tmp_path):
    url = f'{server}/models/cvt-13/resolve/main/pytorch_model.bin'
    with pytest.raises(ValueError, match=rf'{url}: sha256 mismatch, expected 0+, got '
                                         rf'{hashlib.sha256(PAYLOAD).hexdigest()}'):
        download_url(url, cache_dir=str(tmp_path), sha256='0' * 64, progress=False)
    assert _files(tmp_path) == []


def test_missing_url_is_file_not_found(server, tmp_path):
    with pytest.raises(FileNotFoundError, match=r'/nope\.pdparams: HTTP 404'):
        download_url(f'{server}/nope.pdparams', cache_dir=str(tmp_path), progress=False)
    assert _files(tmp_path) == []


def test_url_without_file_name_is_rejected(tmp_path):
    with pytest.raises(ValueError, match='expected an http'):
        download_url('ftp://example.com/', cache_dir=str(tmp_path))
