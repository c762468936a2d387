""" The typed argument specs (``timm_resattn.schema``): strict types, numpy scalars, ranges, unknown keys. """
import numpy as np
import pytest

from timm_resattn.errors import ConfigError, WeightsError
from timm_resattn.schema import Bool, Choice, Float, Int, IntTuple, Nullable, Schema, Str


def test_specs_accept_and_normalise():
    s = Schema(dict(n=Int(0), f=Float(0, 1, maximum_open=True), b=Bool(), c=Choice((8, 16, 32)), s=Str(),
                    t=IntTuple(1, length=3), o=Nullable(Int(1))))
    out = s.check(dict(n=np.int64(10), f=np.float32(0.5), b=np.bool_(True), c=np.int32(16), s='x', t=[1, 2, 3],
                       o=None))
    assert out == dict(n=10, f=0.5, b=True, c=16, s='x', t=(1, 2, 3), o=None)
    assert type(out['n']) is int and type(out['c']) is int and type(out['b']) is bool


@pytest.mark.parametrize('name, value', [
    ('n', True), ('n', 1.0), ('n', -1), ('n', '3'),
    ('f', 1.0), ('f', float('nan')), ('f', float('inf')), ('f', False),
    ('b', 'false'), ('b', 0), ('b', 'no'),
    ('c', 16.0), ('c', True), ('c', 12),
    ('t', (1, 2)), ('t', (1, 2, 0)), ('t', 5), ('t', (1, 2, True)),
])
def test_specs_refuse(name, value):
    s = Schema(dict(n=Int(0), f=Float(0, 1, maximum_open=True), b=Bool(), c=Choice((8, 16, 32)),
                    t=IntTuple(1, length=3)))
    with pytest.raises(ConfigError, match=f'{name}='):
        s.check({name: value})


def test_schema_unknown_missing_and_error_class():
    s = Schema(dict(a=Int()), error=WeightsError, what='metadata field')
    with pytest.raises(WeightsError, match=r"unknown metadata field\(s\) \['b'\]"):
        s.check(dict(a=1, b=2), source='f.safetensors')
    with pytest.raises(WeightsError, match=r"missing metadata field\(s\) \['a'\]"):
        s.check({}, required=('a',))
    with pytest.raises(WeightsError, match='expected a mapping'):
        s.check([1, 2])


def test_choice_reads_a_registry_at_each_check():
    registry = ['a']
    s = Schema(dict(u=Choice(lambda: tuple(registry))))
    with pytest.raises(ConfigError, match=r"u='b' is invalid: expected one of 'a'$"):
        s.check(dict(u='b'))
    registry.append('b')
    assert s.check(dict(u='b')) == dict(u='b')


def test_open_bounds_and_what_none_means():
    s = Schema(dict(f=Float(0, 16, minimum_open=True), o=Nullable(Choice((8, 16, 32)), none_means="the net's own")))
    assert s.check(dict(f=16, o=None)) == dict(f=16.0, o=None)
    with pytest.raises(ConfigError, match=r'f=0 is invalid: expected a number in \(0, 16\]'):
        s.check(dict(f=0))
    expected = r"expected one of \(8, 16, 32\), or None \(the net's own\)"
    with pytest.raises(ConfigError, match=r'o=16.0 is invalid: ' + expected):
        s.check(dict(o=16.0))
