""" Typed descriptions of values a user gives, checked in one place.

A :class:`Schema` maps names to specs (:class:`Int`, :class:`Float`, :class:`Bool`, :class:`Choice`, :class:`Str`,
:class:`IntTuple`, :class:`Nullable`, :class:`Any_`). ``schema.check(values)`` checks every value against its spec
and returns them normalised (numpy integers become ``int``, lists become tuples), or raises the error class it was
given with a message that names the key, the value and what was expected. The same schema is used wherever the same
values arrive (Python keyword arguments, ``--model-kwargs``, ``torch.hub``, a file's metadata, a resume checkpoint),
so a value is accepted or refused the same way on every route.

Specs are strict where Python is lax: ``True`` is not an integer, ``'false'`` is not a boolean, ``1e300`` is not a
float in a range that ends below it, ``nan`` is in no range.
"""
import math
import numbers
import operator
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Tuple, Type, Union

from .errors import ConfigError, ResAttnError

__all__ = ['Spec', 'Int', 'Float', 'Bool', 'Choice', 'Str', 'IntTuple', 'Nullable', 'Any_', 'Schema', 'SchemaViolation']


class SchemaViolation(Exception):
    """ Raised by a spec; :class:`Schema` turns it into the caller's error class with the key's name. """

    def __init__(self, expected: str):
        super().__init__(expected)
        self.expected = expected


def _is_bool(value: Any) -> bool:
    kind = type(value)
    return isinstance(value, bool) or (kind.__module__ == 'numpy' and kind.__name__ in ('bool', 'bool_'))


class Spec:
    """ One value's type and range. ``check`` returns the normalised value or raises ``SchemaViolation``. """

    def describe(self) -> str:
        raise NotImplementedError

    def check(self, value: Any) -> Any:
        raise NotImplementedError


class Int(Spec):
    """ An integer (Python or numpy, never a bool or a float) in ``[minimum, maximum]``. """

    def __init__(self, minimum: Optional[int] = None, maximum: Optional[int] = None):
        self.minimum, self.maximum = minimum, maximum

    def describe(self) -> str:
        if self.minimum is not None and self.maximum is not None:
            return f'an integer in [{self.minimum}, {self.maximum}]'
        if self.minimum is not None:
            return f'an integer >= {self.minimum}'
        if self.maximum is not None:
            return f'an integer <= {self.maximum}'
        return 'an integer'

    def check(self, value: Any) -> int:
        if _is_bool(value) or not isinstance(value, numbers.Integral):
            raise SchemaViolation(self.describe())
        value = operator.index(value)
        if (self.minimum is not None and value < self.minimum) or (self.maximum is not None and value > self.maximum):
            raise SchemaViolation(self.describe())
        return value


class Float(Spec):
    """ A finite real number (int, float or numpy scalar; never a bool) in ``[minimum, maximum]``; ``minimum_open``
    / ``maximum_open`` leave the bound out (``(0, 16]``, ``[0, 1)``). """

    def __init__(self, minimum: Optional[float] = None, maximum: Optional[float] = None, maximum_open: bool = False,
                 minimum_open: bool = False):
        self.minimum, self.maximum, self.maximum_open, self.minimum_open = minimum, maximum, maximum_open, minimum_open

    def describe(self) -> str:
        lo = '-inf' if self.minimum is None else f'{self.minimum:g}'
        hi = 'inf' if self.maximum is None else f'{self.maximum:g}'
        left = '(' if self.minimum_open or self.minimum is None else '['
        return f'a number in {left}{lo}, {hi}{")" if self.maximum_open or self.maximum is None else "]"}'

    def check(self, value: Any) -> float:
        if _is_bool(value) or not isinstance(value, numbers.Real):
            raise SchemaViolation(self.describe())
        value = float(value)
        if not math.isfinite(value) or (self.minimum is not None and value < self.minimum):
            raise SchemaViolation(self.describe())
        if self.minimum_open and value == self.minimum:
            raise SchemaViolation(self.describe())
        if self.maximum is not None and (value > self.maximum or (self.maximum_open and value == self.maximum)):
            raise SchemaViolation(self.describe())
        return value


class Bool(Spec):
    """ ``True`` or ``False`` (or a numpy bool); strings like ``'false'`` and integers are refused. """

    def describe(self) -> str:
        return 'True or False (a bool; strings like "false" are not accepted)'

    def check(self, value: Any) -> bool:
        if not _is_bool(value):
            raise SchemaViolation(self.describe())
        return bool(value)


class Choice(Spec):
    """ One of ``choices`` (compared by type and value: ``16.0`` is not ``16``, ``True`` is not ``1``).

    ``choices`` may be a function returning them, read at each check (a registry that can grow, such as the
    residual unit types of ``layers.units``).
    """

    def __init__(self, choices: Union[Iterable[Any], Callable[[], Iterable[Any]]]):
        self._choices = choices if callable(choices) else tuple(choices)

    @property
    def choices(self) -> Tuple[Any, ...]:
        return tuple(self._choices()) if callable(self._choices) else self._choices

    def describe(self) -> str:
        choices = self.choices
        if choices and not any(isinstance(c, str) for c in choices):
            return f'one of {choices!r}'  # numbers as a tuple: 'one of (8, 16, 32)'
        return f"one of {', '.join(repr(c) for c in choices)}"

    def check(self, value: Any) -> Any:
        choices = self.choices
        if _is_bool(value) and not any(_is_bool(c) for c in choices):
            raise SchemaViolation(self.describe())
        if isinstance(value, numbers.Integral) and not _is_bool(value):
            value = operator.index(value)
        for choice in choices:
            if type(choice) is type(value) and choice == value:
                return value
        raise SchemaViolation(self.describe())


class Str(Spec):
    """ A string (optionally non-empty). """

    def __init__(self, non_empty: bool = False):
        self.non_empty = non_empty

    def describe(self) -> str:
        return 'a non-empty string' if self.non_empty else 'a string'

    def check(self, value: Any) -> str:
        if not isinstance(value, str) or (self.non_empty and not value):
            raise SchemaViolation(self.describe())
        return value


class IntTuple(Spec):
    """ A tuple (or list) of integers in ``[minimum, maximum]``, of ``length`` items if given (at least one
    otherwise); ``per`` names what each item is for in messages (``'stage'``: "one per stage"). """

    def __init__(self, minimum: int = 0, length: Optional[int] = None, per: str = '', maximum: Optional[int] = None):
        self.minimum, self.maximum, self.length, self.per = minimum, maximum, length, per

    def describe(self) -> str:
        count = f'{self.length}' if self.length is not None else 'one or more'
        within = f'in [{self.minimum}, {self.maximum}]' if self.maximum is not None else f'>= {self.minimum}'
        return f'a tuple of {count} integers {within}' + (f', one per {self.per}' if self.per else '')

    def check(self, value: Any) -> Tuple[int, ...]:
        if not isinstance(value, (tuple, list)):
            raise SchemaViolation(self.describe())
        if (self.length is not None and len(value) != self.length) or (self.length is None and not value):
            raise SchemaViolation(self.describe())
        item = Int(self.minimum, self.maximum)
        try:
            return tuple(item.check(v) for v in value)
        except SchemaViolation:
            raise SchemaViolation(self.describe()) from None


class Nullable(Spec):
    """ ``None`` or a value of ``inner``; ``none_means`` says what None stands for in messages. """

    def __init__(self, inner: Spec, none_means: str = ''):
        self.inner, self.none_means = inner, none_means

    def describe(self) -> str:
        if self.none_means:
            return f'{self.inner.describe()}, or None ({self.none_means})'
        return f'None or {self.inner.describe()}'

    def check(self, value: Any) -> Any:
        if value is None:
            return None
        try:
            return self.inner.check(value)
        except SchemaViolation:
            raise SchemaViolation(self.describe()) from None


class Any_(Spec):
    """ Any value passing ``predicate`` (for values with no closed type, such as an activation layer). """

    def __init__(self, predicate: Callable[[Any], bool], description: str):
        self.predicate, self.description = predicate, description

    def describe(self) -> str:
        return self.description

    def check(self, value: Any) -> Any:
        if not self.predicate(value):
            raise SchemaViolation(self.describe())
        return value


class Schema:
    """ Named specs: ``check(values)`` validates each present key and refuses unknown ones.

    Args:
        specs: ``name -> Spec``.
        error: The ``ResAttnError`` subclass raised for a bad or unknown value.
        what: How the values are called in messages (``'argument'``, ``'metadata field'``, ...).
    """

    def __init__(self, specs: Mapping[str, Spec], error: Type[ResAttnError] = ConfigError, what: str = 'argument'):
        self.specs: Dict[str, Spec] = dict(specs)
        self.error, self.what = error, what

    def __contains__(self, name: str) -> bool:
        return name in self.specs

    def names(self) -> Tuple[str, ...]:
        return tuple(self.specs)

    def check_value(self, name: str, value: Any, source: str = '') -> Any:
        """ One value (``name`` must be in the schema). ``source`` prefixes the message (a file, a flag). """
        try:
            return self.specs[name].check(value)
        except SchemaViolation as e:
            where = f'{source}: ' if source else ''
            raise self.error(f'{where}{name}={value!r:.200} is invalid: expected {e.expected}') from None

    def check(self, values: Mapping[str, Any], source: str = '', required: Iterable[str] = ()) -> Dict[str, Any]:
        """ Every value of ``values`` checked and normalised; unknown keys and missing ``required`` ones refused. """
        where = f'{source}: ' if source else ''
        if not isinstance(values, Mapping):
            raise self.error(f'{where}expected a mapping of {self.what}s, got {type(values).__name__}')
        unknown = sorted(str(k) for k in values if k not in self.specs)
        if unknown:
            raise self.error(f'{where}unknown {self.what}(s) {unknown}; known: {sorted(self.specs)}')
        missing = [k for k in required if k not in values]
        if missing:
            raise self.error(f'{where}missing {self.what}(s) {missing}')
        return {k: self.check_value(k, v, source) for k, v in values.items()}
