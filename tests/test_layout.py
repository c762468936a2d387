""" The package's layering, read from its source: imports point down the layers README draws, no import cycle,
timm only through public names (but the two it does not export), and weight files read only in ``weights/``.
"""
import ast
from pathlib import Path
from typing import Dict, List, Set, Tuple

import pytest

from helpers import REPO_ROOT

PACKAGE = REPO_ROOT / 'timm_resattn'

# bottom to top (README "Layout"); a module may import from its own layer and the ones below
LAYERS: List[Tuple[str, ...]] = [
    ('errors', 'schema', 'version'),
    ('layers',),
    ('weights', 'convert', 'convert.pytorchcv'),  # convert/__init__ is a docstring
    ('models',),
    ('analysis', 'convert.caffe', 'export', 'train'),
    ('cli',),
    ('__init__', '__main__'),  # the package root; ``python -m timm_resattn COMMAND``
]

# private timm names used because timm exports no public one for them
PRIVATE_TIMM_ALLOWED = {('timm.models._features', 'feature_take_indices'), ('timm.models._hub', 'generate_readme')}


def _is_private(name: str) -> bool:
    return name.startswith('_') and not (name.startswith('__') and name.endswith('__'))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix('').parts)
    if parts[-1] == '__init__' and len(parts) > 1:
        parts = parts[:-1]
    return '.'.join(parts)


def _layer(module: str) -> int:
    best, rank = -1, None
    for i, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + '.')) and len(name) > best:
                best, rank = len(name), i
    assert rank is not None, f'{module} is in no layer of LAYERS: add it where it belongs'
    return rank


def _sources() -> Dict[str, Tuple[Path, ast.Module]]:
    return {_module_name(p): (p, ast.parse(p.read_text(encoding='utf-8'))) for p in sorted(PACKAGE.rglob('*.py'))}


def _package_imports(module: str, path: Path, tree: ast.Module, known: Set[str]) -> Set[str]:
    """ The package modules ``module`` imports anywhere (module level or inside functions). """
    if module == '__init__':  # the package root
        package = []
    else:
        package = module.split('.') if path.name == '__init__.py' else module.split('.')[:-1]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1] if node.level > 1 else package
                target = '.'.join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith('timm_resattn'):
                target = node.module[len('timm_resattn.'):] if node.module != 'timm_resattn' else '__init__'
            else:
                continue
            for alias in node.names:  # `from . import x` may name a submodule
                sub = f'{target}.{alias.name}' if target else alias.name
                found.add(sub if sub in known else (target or '__init__'))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith('timm_resattn.'):
                    found.add(alias.name[len('timm_resattn.'):])
        elif isinstance(node, ast.Call) and getattr(node.func, 'attr', None) == 'import_module' and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.JoinedStr) or (isinstance(arg, ast.Constant) and str(arg.value).startswith('.')):
                found.add(module if path.name == '__init__.py' else '.'.join(package))  # resolved lazily, same package
    return {m for m in found if m != module}


def test_imports_point_down():
    sources = _sources()
    known = set(sources)
    upward = []
    for module, (path, tree) in sources.items():
        for target in _package_imports(module, path, tree, known):
            if _layer(target) > _layer(module):
                upward.append(f'{module} -> {target}')
    assert not upward, f'imports pointing up the layers: {upward}'


def _cycles(graph: Dict[str, Set[str]]) -> List[str]:
    state: Dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(m: str, stack: List[str]) -> None:
        state[m] = 1
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                cycles.append(' -> '.join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t, stack + [t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    return cycles


def test_no_import_cycle():
    sources = _sources()
    known = set(sources)
    graph = {m: _package_imports(m, p, t, known) & known for m, (p, t) in sources.items()}
    # a package's __init__ re-exporting its own modules is not a dependency cycle of the code
    graph = {m: {t for t in deps if not t.startswith(m + '.')} for m, deps in graph.items()}
    assert _cycles({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a -> b -> c -> a']  # the search finds one
    assert not _cycles(graph), f'import cycles: {_cycles(graph)}'


def test_timm_through_public_names():
    private = []
    for module, (_, tree) in _sources().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split('.')[0] == 'timm':
                for alias in node.names:
                    if any(_is_private(part) for part in node.module.split('.') + [alias.name]) and \
                            (node.module, alias.name) not in PRIVATE_TIMM_ALLOWED:
                        private.append(f'{module}: from {node.module} import {alias.name}')
            elif isinstance(node, ast.Import):
                private += [f'{module}: import {a.name}' for a in node.names
                            if a.name.split('.')[0] == 'timm' and any(_is_private(p) for p in a.name.split('.'))]
    assert not private, f'private timm imports: {private}'


def _torch_load_calls(tree: ast.Module) -> List[ast.Call]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == 'load' and getattr(node.func.value, 'id', None) == 'torch']


def test_weight_files_read_only_by_the_weights_layer():
    """ ``torch.load`` only in ``weights/``, and there only with ``weights_only=True``. """
    outside, unsafe = [], []
    for module, (_, tree) in _sources().items():
        for call in _torch_load_calls(tree):
            if not module.startswith('weights'):
                outside.append(f'{module}:{call.lineno}')
            kw = {k.arg: k.value for k in call.keywords}
            if not (isinstance(kw.get('weights_only'), ast.Constant) and kw['weights_only'].value is True):
                unsafe.append(f'{module}:{call.lineno}')
    assert not outside, f'torch.load outside timm_resattn/weights: {outside}'
    assert not unsafe, f'torch.load without weights_only=True: {unsafe}'


@pytest.mark.parametrize('source, expected', [
    ('from ..models import ResAttnCfg\n', 'models'),
    ('from timm_resattn.cli import main\n', 'cli'),
])
def test_the_layer_check_sees_imports(source, expected):
    """ The checks above can fail: a relative and an absolute import are both found. """
    path = PACKAGE / 'layers' / 'units.py'
    found = _package_imports('layers.units', path, ast.parse(source), set(_sources()))
    assert expected in found
    assert _layer(expected) > _layer('layers.units')


def _reexported(tree: ast.Module) -> List[str]:
    """ Names in a module's ``__all__`` that it only imports (from anywhere), plus its star imports. """
    imported, defined, exported = set(), set(), []
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                if alias.name == '*':
                    exported.append(f"from {'.' * node.level}{node.module} import *")
                imported.add(alias.asname or alias.name.split('.')[0])
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                for n in ast.walk(t):
                    if isinstance(n, ast.Name):
                        defined.add(n.id)
                        if n.id == '__all__' and isinstance(node.value, (ast.List, ast.Tuple)):
                            exported += [e.value for e in node.value.elts if isinstance(e, ast.Constant)]
    return [n for n in exported if n.startswith('from ') or (n in imported and n not in defined)]


def test_each_name_in_one_module():
    """ No module re-exports another's names (no shims, no star imports): a public name lives in the module that
    defines it, and a package's ``__init__`` may gather its own submodules' names as the package's API. """
    found = []
    for module, (path, tree) in _sources().items():
        names = _reexported(tree)
        if path.name == '__init__.py':
            names = [n for n in names if n.startswith('from ')]
        found += [f'{module}: {n}' for n in names]
    assert not found, f'names re-exported from other modules: {found}'
    shim = ast.parse("from .analysis.masks import *\nfrom .errors import ConfigError\n__all__ = ['ConfigError']\n")
    assert _reexported(shim) == ['from .analysis.masks import *', 'ConfigError']  # the check can fail
