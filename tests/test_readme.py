""" README.md's model table is `timm-resattn list`'s output, and the entrypoint docstrings repeat none of its numbers.

Each number lives in one place: params and GMACs are computed by ``timm_resattn.analysis.summary.model_summary`` and
printed by the ``list`` command; README's table must equal that output row for row, so editing a number in README
(or changing a model) fails here until the two agree again.
"""
import io
import re

import pytest

import timm
import timm_resattn  # noqa: F401  (registers the models)
from helpers import REPO_ROOT
from timm_resattn.cli.models_table import print_model_table
from timm_resattn.models import resattnet

README = REPO_ROOT / 'README.md'


def _list_output(names):
    out = io.StringIO()
    print_model_table(names, file=out)
    return out.getvalue()


def _parse_list(text):
    """ ``timm-resattn list``'s table: its header words and one list of cells per model row. """
    lines = text.splitlines()
    header = lines[0].split()
    rows = []
    for line in lines[2:]:
        if not line.strip():
            break
        rows.append(line.split(maxsplit=len(header) - 1))
    return header, rows


def _readme_table(header, path=README):
    """ The README table whose header row is ``header``: one list of cells (backticks stripped) per row. """
    lines = path.read_text(encoding='utf-8').splitlines()
    want = '| ' + ' | '.join(header) + ' |'
    starts = [i for i, line in enumerate(lines) if line.strip() == want]
    assert len(starts) == 1, f'README.md needs exactly one table with the header {want!r}, found {len(starts)}'
    rows = []
    for line in lines[starts[0] + 2:]:
        if not line.startswith('|'):
            break
        rows.append([cell.strip().strip('`') for cell in line.strip().strip('|').split('|')])
    return rows


def _markdown(header, rows):
    head = '| ' + ' | '.join(header) + ' |'
    align = '|' + '|'.join('---' if i in (0, len(header) - 1) else '---:' for i in range(len(header))) + '|'
    body = ['| ' + ' | '.join([f'`{r[0]}`'] + r[1:]) + ' |' for r in rows]
    return '\n'.join([head, align] + body)


def test_readme_model_table_is_the_list_output():
    names = timm.list_models(module='resattnet')
    header, expected = _parse_list(_list_output(names))
    assert [r[0] for r in expected] == names
    got = _readme_table(header)
    assert got == expected, 'README.md model table differs from `timm-resattn list`; it should read:\n' + _markdown(
        header, expected)


def test_readme_parser_sees_an_edit(tmp_path):
    """ The comparison is on the cells: a one-digit change in README's table is a difference. """
    text = README.read_text(encoding='utf-8')
    edited = re.sub(r'(\| `resattnet56` \| 31,810,72)8', r'\g<1>9', text, count=1)
    assert edited != text, "README.md has no row '| `resattnet56` | 31,810,728'"
    path = tmp_path / 'README.md'
    path.write_text(edited, encoding='utf-8')
    header, _ = _parse_list(_list_output([]))  # the header alone
    row = [r for r in _readme_table(header, path) if r[0] == 'resattnet56'][0]
    assert row[1] == '31,810,729'


@pytest.mark.parametrize('name', timm.list_models(module='resattnet'))
def test_entrypoint_docstring_repeats_no_counts(name):
    """ Params and MACs are stated once (README / `timm-resattn list`); a docstring that repeats them drifts. """
    doc = getattr(resattnet, name).__doc__
    assert doc, f'{name} has no docstring'
    assert not re.search(r'\d{1,3}(,\d{3})+', doc), f'{name} docstring repeats a parameter count'
    assert not re.search(r'GMAC', doc), f'{name} docstring repeats a MAC count'


def test_readme_short():
    assert len(README.read_text(encoding='utf-8').splitlines()) <= 250
