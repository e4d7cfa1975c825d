"""utils/download.py against a local HTTP server: download once, cache, sha256 check, no leftovers; and a
weights tag that cannot be downloaded says how to use it offline."""
import hashlib
import http.server
import socket
import threading
from pathlib import Path

import paddle
import pytest

from models import create_model, cvt_weights
from utils.download import DownloadError, cache_path, download_url

PAYLOAD = b'cvt weights ' * 5000


class _Handler(http.server.BaseHTTPRequestHandler):
    hits = []

    def do_GET(self):
        type(self).hits.append(self.path)
        if self.path == '/short/model.bin':  # the connection ends before the promised length
            self.send_response(200)
            self.send_header('Content-Length', str(2 * len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD)
            return
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


def test_truncated_download_leaves_no_folders(server, tmp_path):
    with pytest.raises(DownloadError, match=rf'/short/model\.bin: download failed \(got {len(PAYLOAD)} of '):
        download_url(f'{server}/short/model.bin', cache_dir=str(tmp_path / 'cache'), progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def unreachable_url():
    """A URL on a local port nothing listens on: the connection is refused at once, as offline."""
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    return f'http://127.0.0.1:{port}/microsoft/cvt-tiny/resolve/main/pytorch_model.bin'


def test_offline_tag_names_the_urls_cache_path_and_convert_command(unreachable_url, tmp_path, monkeypatch):
    monkeypatch.setenv('CVT_CACHE_DIR', str(tmp_path / 'cache'))
    paddleclas = 'http://127.0.0.1:9/CvT_tiny_pretrained.pdparams'
    monkeypatch.setitem(cvt_weights.PRETRAINED_URLS, 'cvt_tiny', {'hf': unreachable_url, 'paddleclas': paddleclas})
    with pytest.raises(ConnectionError) as info:
        cvt_weights.resolve_source('cvt_tiny')
    lines = str(info.value).splitlines()
    assert lines[0].startswith(f'cvt_tiny: cannot download {unreachable_url} (') and 'refused' in lines[0]
    assert lines[1] == f'  put it at {cache_path(unreachable_url)} (then the tag cvt_tiny works offline), or'
    assert lines[2] == ('  run python tools/convert_weights.py pytorch_model.bin cvt_tiny.pdparams --model cvt_tiny '
                        'and give cvt_tiny.pdparams in place of the tag')
    assert lines[3] == f'other sources of cvt_tiny: cvt_tiny.paddleclas ({paddleclas})'
    assert lines[4] == 'every tag, URL and cache path: python tools/convert_weights.py --list'
    assert not (tmp_path / 'cache').exists()

    placed = cache_path(unreachable_url)  # a file fetched by hand, put where the message says: the tag works
    source = create_model('cvt_tiny')
    Path(placed).parent.mkdir(parents=True)
    paddle.save(source.state_dict(), placed)
    model = create_model('cvt_tiny', pretrained='cvt_tiny')
    assert paddle.equal_all(model.head.weight, source.head.weight)
