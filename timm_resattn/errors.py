""" The errors that a user's input can cause, as one family.

Library code raises a subclass of :class:`ResAttnError` when something a user gave (an argument, a setting, a file)
is wrong, with a message that names the argument or file and says what was expected. The command layer
(``timm_resattn.cli``) prints exactly these as ``error: <message>`` and exits with status 2; any other exception
is a bug and keeps its traceback.

Each subclass also derives from the built-in exception that callers caught before it existed (``ValueError``,
``RuntimeError``, ``FileNotFoundError``), so ``except ValueError`` around ``timm.create_model`` keeps working.
"""

__all__ = [
    'ResAttnError', 'ConfigError', 'WeightsError', 'ConversionError', 'DataError', 'CommandError', 'MissingFileError',
    'ExportError', 'MissingExtraError', 'check_choice',
]


class ResAttnError(Exception):
    """ Something the user gave is wrong; the message says what and where. """


class ConfigError(ResAttnError, ValueError):
    """ An architecture setting (a ``ResAttnCfg`` field or a model kwarg) has a wrong type or value. """


class WeightsError(ResAttnError, RuntimeError):
    """ A weight file that can't be read safely, or whose tensors don't fit the model. """


class ConversionError(WeightsError, ValueError):
    """ Weights in another format (Caffe blobs, pytorchcv names) that can't be converted for the target model. """


class DataError(ResAttnError, ValueError):
    """ A dataset file that is missing, corrupt or not in the expected format. """


class ExportError(ResAttnError, ValueError):
    """ A model or destination that can't be exported (Hub folder, ONNX, ...) as asked. """


class MissingFileError(ResAttnError, FileNotFoundError):
    """ A file the user named does not exist. """


class MissingExtraError(ResAttnError, ModuleNotFoundError):
    """ An optional package (an extra such as ``export``) is not installed; the message says what to install. """


class CommandError(ResAttnError, ValueError):
    """ A command-line argument with a wrong value (the message names the flag). """


def check_choice(field: str, value, choices) -> None:
    """ The one check of a string switch (``ResAttnCfg.validate`` and the layers that take the switch call it):
    a ``ConfigError`` naming the field and the accepted values unless ``value`` is one of ``choices``. """
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(f"{field}={value!r} is invalid: expected one of {', '.join(repr(c) for c in choices)}")
