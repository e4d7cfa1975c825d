"""deploy/classify.py: how results are shown (table on a terminal, JSON when asked for or piped, the summary
line)."""
import json
import sys

from deploy.classify import Classified, show_results

RESULTS = [{'class_ids': [7, 2], 'scores': [0.61234, 0.2], 'file_name': 'photos/a.jpg', 'label_names': []},
           {'class_ids': [2, 7], 'scores': [0.5, 0.25], 'file_name': 'photos/long_name.png', 'label_names': []}]


def _show(capsys, monkeypatch, results=RESULTS, skipped=('photos/bad.jpg: not a readable image (x)',),
          on_terminal=True, json_requested=False, **kwargs):
    monkeypatch.setattr(sys.stdout, 'isatty', lambda: on_terminal)
    show_results(Classified(results, list(skipped), 2.0, {}), json_requested=json_requested, **kwargs)
    return capsys.readouterr()


def test_a_terminal_gets_an_aligned_table_with_class_ids_when_there_are_no_labels(capsys, monkeypatch):
    shown = _show(capsys, monkeypatch)
    assert shown.out.splitlines() == ['file                  top-1    top-2',
                                      'photos/a.jpg          7 0.612  2 0.200',
                                      'photos/long_name.png  2 0.500  7 0.250']
    assert shown.err == '2 images classified, 1 skipped, in 2.0 s (1.0 img/s); JSON with --json or --output_json FILE\n'


def test_json_goes_to_stdout_when_asked_for_piped_or_for_one_file(capsys, monkeypatch, tmp_path):
    out = tmp_path / 'all.json'
    asked = _show(capsys, monkeypatch, json_requested=True, output_json=str(out), notes=['benchmark: ...'])
    assert asked.out.splitlines()[0] == 'benchmark: ...' and json.loads(asked.out.splitlines()[1]) == RESULTS
    assert asked.err.endswith(f'JSON on stdout and in {out}\n') and json.loads(out.read_text()) == RESULTS
    assert json.loads(_show(capsys, monkeypatch, on_terminal=False).out) == RESULTS
    assert json.loads(_show(capsys, monkeypatch, results=RESULTS[:1], skipped=()).out) == RESULTS[:1]
