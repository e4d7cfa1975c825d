"""The rooms of the repo: no import circle, and no arrow from a lower room to a higher one.

utils/ is the ground floor (what every room uses); models/ and datasets/ stand on it; training/ and
deploy/ on those; cli.py on them; the scripts and tools on top. Every import counts, function-level ones too.
"""
import ast
import subprocess

from tests.scripts import ROOT

SCRIPTS = ('train', 'eval', 'predict', 'export_model', 'infer', 'hubconf')
# room -> floor; a module imports from its own room or from lower floors only
FLOORS = {'utils': 0, 'models': 1, 'datasets': 1, 'training': 2, 'deploy': 2, 'cli': 3, 'scripts': 4, 'tools': 5}


def _modules():
    """{dotted name: path} of the repo's Python files outside tests/ (a package under its own name)."""
    files = subprocess.run(['git', 'ls-files', '*.py'], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    names = {}
    for path in files:
        if path.startswith('tests/'):
            continue
        name = path[:-len('.py')].replace('/', '.')
        names[name[:-len('.__init__')] if name.endswith('.__init__') else name] = path
    return names


def _room(module: str) -> str:
    top = module.split('.')[0]
    return 'scripts' if top in SCRIPTS else top


def _imports(module: str, path: str, modules) -> set:
    """The repo modules `module` imports, anywhere in its file."""
    package = module if path.endswith('__init__.py') else module.rpartition('.')[0]
    found = set()
    for node in ast.walk(ast.parse((ROOT / path).read_text(encoding='utf-8'))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                base = '.'.join(package.split('.')[:len(package.split('.')) - node.level + 1] + ([base] if base else []))
            # `from package import module` names a module; `from module import name` names the module
            targets = [f'{base}.{alias.name}' if f'{base}.{alias.name}' in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            if module.startswith('tools') and f'tools.{target}' in modules:  # tools import their neighbours bare
                target = f'tools.{target}'
            while target and target not in modules:  # `import a.b.c` of a package path: its deepest repo module
                target = target.rpartition('.')[0]
            if target and target != module:
                found.add(target)
    return found


def _graph():
    modules = _modules()
    return {module: _imports(module, path, modules) for module, path in modules.items()}


def test_the_parser_sees_function_level_and_relative_imports():
    graph = _graph()
    assert 'deploy.quantize' in graph['deploy.export'] and 'deploy.layout' in graph['deploy.quantize']
    assert 'utils.distributed' in graph['utils.logger']  # imported inside a function
    assert 'models.cvt' in graph['models']  # `from . import cvt`


def test_no_import_circle():
    graph = _graph()
    done, path = set(), []

    def visit(module):
        if module in path:
            raise AssertionError('import circle: ' + ' -> '.join(path[path.index(module):] + [module]))
        if module in done:
            return
        path.append(module)
        for target in sorted(graph[module]):
            visit(target)
        path.pop()
        done.add(module)
    for module in sorted(graph):
        visit(module)


def test_no_room_imports_from_a_higher_or_neighbouring_room():
    wrong = [f'{module} -> {target}' for module, targets in sorted(_graph().items()) for target in sorted(targets)
             if _room(target) != _room(module) and FLOORS[_room(target)] >= FLOORS[_room(module)]]
    assert wrong == []
