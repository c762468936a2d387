""" Every argument of a Residual Attention Network is checked against one typed description (``MODEL_ARGS``), the
same way from Python (``timm.create_model``, ``ResidualAttentionNet``), ``--model-kwargs`` and ``torch.hub``
(issue 17): types are strict (bools are not integers, strings are not bools), numpy scalars are accepted and
normalised, and a bad value is a ``ConfigError`` naming it, never a timm AssertionError/KeyError or a silent
truthy reading. Models are narrow CIFAR nets, on the meta device where nothing runs. """
import inspect
from dataclasses import fields

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

import timm
import timm_resattn  # noqa: F401
from helpers import NARROW_CIFAR, NARROW_IMAGENET, REPO_ROOT
from timm_resattn.errors import CommandError, ConfigError

pytestmark = pytest.mark.usefixtures('one_thread')
CIFAR = 'resattnet56_cifar'


def _create(name=CIFAR, **kwargs):
    kwargs.setdefault('device', 'meta')
    return timm.create_model(name, **dict(NARROW_CIFAR if name.endswith('_cifar') else NARROW_IMAGENET, **kwargs))


def _hub(name=CIFAR, **kwargs):
    kwargs.setdefault('device', 'meta')
    return torch.hub.load(str(REPO_ROOT), name, source='local', **dict(NARROW_CIFAR, **kwargs))


def _direct(**kwargs):
    from timm_resattn.models.resattnet import ResidualAttentionNet, model_cfgs
    kwargs.setdefault('device', 'meta')
    return ResidualAttentionNet(model_cfgs[CIFAR], **dict(NARROW_CIFAR, **kwargs))


# (kwargs, the message's start): refused on every route with the same ConfigError
BAD = [
    # named in the issue
    (dict(zero_init_last='no'), "zero_init_last='no' is invalid: expected True or False"),
    (dict(global_pool='nonsense'), "global_pool='nonsense' is invalid: expected one of ''"),
    (dict(act_layer='nonsense'), "act_layer='nonsense' is invalid: expected an activation name"),
    # not named: a truthy int, a pool that is not a string, an activation that is no layer (or none at all)
    (dict(zero_init_last=1), 'zero_init_last=1 is invalid'),
    (dict(zero_init_last='False'), "zero_init_last='False' is invalid"),
    (dict(global_pool=3), 'global_pool=3 is invalid'),
    (dict(global_pool='AVG'), "global_pool='AVG' is invalid"),  # timm lower-cases it but not its feature count
    (dict(act_layer=42), 'act_layer=42 is invalid'),
    (dict(act_layer=''), "act_layer='' is invalid"),  # get_act_layer('') is None: a net without activations
    (dict(act_layer=nn.ReLU()), 'act_layer=ReLU() is invalid'),  # an instance, not a layer factory
    (dict(in_chans=True), 'in_chans=True is invalid: expected an integer in [1, 65536]'),
    (dict(dtype=torch.int64), 'dtype=torch.int64 is invalid: expected None or a floating-point torch.dtype'),
    (dict(attention_residual='true'), "attention_residual='true' is invalid"),
    (dict(p=np.float64(1.0)), f'p={np.float64(1.0)!r} is invalid: expected an integer in [0, 1000]'),
    # upper bounds: a value that would overflow torch or build a net no memory holds
    (dict(num_classes=2 ** 63), f'num_classes={2 ** 63} is invalid: expected an integer in [0, 10000000]'),
    (dict(r=10 ** 20), f'r={10 ** 20} is invalid: expected an integer in [1, 1000]'),
    (dict(stage_chs=(16, 32, 10 ** 6)), 'stage_chs=(16, 32, 1000000) is invalid: expected a tuple of one or more '
                                        'integers in [1, 65536]'),
    (dict(mask_levels=(17, 1, 0)), 'mask_levels=(17, 1, 0) is invalid'),
    (dict(in_chans=10 ** 9), f'in_chans={10 ** 9} is invalid'),
    # a device this machine lacks (no CUDA index reaches the device count)
    (dict(device=f'cuda:{torch.cuda.device_count()}'), f"device='cuda:{torch.cuda.device_count()}' is invalid"),
]


@pytest.mark.parametrize('kwargs, message', BAD)
@pytest.mark.parametrize('route', ['create_model', 'constructor', 'hub'])
def test_bad_argument_refused_on_every_route(route, kwargs, message):
    build = dict(create_model=_create, constructor=_direct, hub=_hub)[route]
    with pytest.raises(ConfigError) as e:
        build(**kwargs)
    assert str(e.value).startswith(message), e.value


@pytest.mark.parametrize('kwargs, message', BAD)
def test_bad_argument_refused_by_model_kwargs(kwargs, message):
    """ The command layer's parser checks the same description before any model is built, naming the flag. """
    from timm_resattn.cli.common import parse_model_kwargs
    ((key, value),) = kwargs.items()
    item = f'{key}={value!r}' if isinstance(value, str) else f'{key}={value}'  # as typed on a command line
    if key in ('device', 'dtype'):  # the command places the model (--device): refused whatever the value
        with pytest.raises(CommandError, match=f'^--model-kwargs {key}=...: not an architecture setting'):
            parse_model_kwargs([item])
        return
    with pytest.raises(ConfigError, match=f'^--model-kwargs: {key}='):
        parse_model_kwargs([item])


@pytest.mark.parametrize('output_stride', [16.0, np.float64(16.0), 16.5])
def test_output_stride_must_be_an_integer(output_stride):
    with pytest.raises(ConfigError, match=r'output_stride=.* is invalid: expected one of \(8, 16, 32\)'):
        _create('resattnet56', output_stride=output_stride)
    with pytest.raises(ConfigError, match='output_stride='):
        timm.create_model('resattnet56', device='meta').cfg.min_input_size(output_stride)


def test_numpy_scalars_accepted_and_normalised():
    model = _create(num_classes=np.int64(10), in_chans=np.int32(1), drop_rate=np.float32(0.25),
                    drop_path_rate=np.float64(0.1), zero_init_last=np.bool_(False), p=np.int64(2),
                    attention_residual=np.bool_(False), stage_modules=[np.int64(1)] * 3)
    assert type(model.num_classes) is int and model.num_classes == 10 and model.get_classifier().out_features == 10
    assert type(model.in_chans) is int and model.stem.conv.in_channels == 1
    assert type(model.drop_rate) is float and model.drop_rate == 0.25
    assert type(model.cfg.p) is int and model.cfg.p == 2 and len(model.stages[0][1].pre) == 2
    assert model.cfg.attention_residual is False
    assert model.cfg.stage_modules == (1, 1, 1) and all(type(v) is int for v in model.cfg.stage_modules)
    dense = _create('resattnet56', output_stride=np.int64(16))
    assert type(dense.output_stride) is int and dense.feature_info[-1]['reduction'] == 16


def test_zero_init_last_numpy_bool_zero_inits():
    from timm_resattn.layers import PreActBottleneck
    model = _create(zero_init_last=np.bool_(True), device='cpu')
    units = [m for m in model.modules() if isinstance(m, PreActBottleneck)]
    assert units and all(not u.conv3.weight.any() for u in units)
    plain = _create(zero_init_last=False, device='cpu')
    assert all(u.conv3.weight.any() for u in plain.modules() if isinstance(u, PreActBottleneck))
    with pytest.raises(ConfigError, match="zero_init_last='yes'"):
        plain.init_weights(zero_init_last='yes')


@pytest.mark.parametrize('kwargs', [dict(drop_path_rate=1.0), dict(drop_rate=-0.1), dict(num_classes=-1),
                                    dict(num_classes=2.0), dict(in_chans=0)])
def test_constructor_ranges(kwargs):
    with pytest.raises(ConfigError, match=f'{next(iter(kwargs))}='):
        _create(**kwargs)


def test_devices():
    assert next(_create(device=torch.device('meta')).parameters()).is_meta
    with pytest.raises(ConfigError, match="device='nonsense' is invalid"):
        timm.create_model(CIFAR, device='nonsense', **NARROW_CIFAR)
    with pytest.raises(ConfigError, match='device=True is invalid'):
        timm.create_model(CIFAR, device=True, **NARROW_CIFAR)
    assert next(_create(dtype=torch.float16).parameters()).dtype == torch.float16


def test_devices_this_machine_lacks():
    count = torch.cuda.device_count()
    for device in (count, torch.device('cuda', count), f'cuda:{count + 7}'):
        with pytest.raises(ConfigError, match=r'is invalid: expected None, or a device this machine has'):
            timm.create_model(CIFAR, device=device, **NARROW_CIFAR)
    if not torch.backends.mps.is_available():
        with pytest.raises(ConfigError, match="device='mps' is invalid"):
            timm.create_model(CIFAR, device='mps', **NARROW_CIFAR)


def test_timms_feature_arguments_are_checked():
    """ timm's own ``features_only`` / ``feature_cfg`` / ``out_indices`` reach our entrypoint: a string is not a
    bool, the net's levels bound the indices (timm would fail with an IndexError, or return no features for -1),
    and a ``feature_cfg`` of the user's is merged into ours instead of clashing with it. """
    with pytest.raises(ConfigError, match="features_only='False' is invalid: expected True or False"):
        _create(features_only='False')
    for bad in ((4,), -1, 0, 5, (1, 'a'), (), (True,)):
        with pytest.raises(ConfigError, match=r'out_indices=.* is invalid: .*this net has 4 feature levels'):
            _create(features_only=True, out_indices=bad)
    with pytest.raises(ConfigError, match="feature_cfg='x' is invalid: expected a dict"):
        _create(features_only=True, feature_cfg='x')
    assert _create(features_only=True, out_indices=(-1,)).feature_info.reduction() == [4]
    assert _create(features_only=True, out_indices=2).feature_info.channels() == [32, 64]
    net = _create(features_only=True, feature_cfg=dict(out_indices=(1,)))
    assert net.feature_info.channels() == [16]


def test_export_of_a_model_built_from_numpy_and_classes(tmp_path):
    """ timm records create_model's arguments as given and writes them to config.json: numpy scalars and an
    activation class are written as the model's normalised values, and the folder rebuilds the same net. """
    from timm_resattn.export.hub import save_pretrained
    model = timm.create_model(CIFAR, p=np.int64(1), attention_residual=np.bool_(False), act_layer=nn.SiLU,
                              zero_init_last=np.bool_(False), **NARROW_CIFAR)
    model.set_memory_efficient(np.bool_(True))
    assert model.cfg.memory_efficient is True
    out = save_pretrained(model.eval(), tmp_path / 'np')
    loaded = timm.create_model(f'local-dir:{out}', pretrained=True).eval()
    assert loaded.cfg.attention_residual is False and loaded.act_name == 'SiLU'
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_global_pool_types_are_timms():
    """ Every accepted pool type builds and runs in timm's head; '' leaves the features unpooled. """
    from timm_resattn.models.config import POOL_TYPES
    model = _create(device='cpu').eval()
    feats = torch.randn(2, model.num_features, 4, 4)
    for pool in POOL_TYPES:
        classes = 3 if pool else 0  # no pooling: no classifier (timm's ClassifierHead)
        model.reset_classifier(classes, pool)
        with torch.no_grad():
            out = model.forward_head(feats)
        assert out.shape == ((2, 3) if pool else feats.shape), pool
        assert _create(num_classes=classes, global_pool=pool).head.global_pool.pool_type == pool
    # unpooled features with a classifier: timm's Linear would fail on the 4-d map at the first forward
    with pytest.raises(ConfigError, match="global_pool='' is invalid with num_classes=10"):
        _create(global_pool='')
    model.reset_classifier(0, '')
    with pytest.raises(ConfigError, match="global_pool='' is invalid with num_classes=3"):
        model.reset_classifier(3)  # the pool stays ''
    assert _create(act_layer='silu').stem.conv is not None and _create(act_layer=nn.GELU) is not None


def test_reset_classifier_checks_like_the_constructor():
    model = _create()
    for args, match in [((-1,), 'num_classes=-1 is invalid'), ((True,), 'num_classes=True is invalid'),
                        ((2.0,), 'num_classes=2.0 is invalid'), ((5, 'nonsense'), "global_pool='nonsense'"),
                        ((5, 0), 'global_pool=0 is invalid')]:
        with pytest.raises(ConfigError, match=match):
            model.reset_classifier(*args)
    assert model.num_classes == 10 and model.get_classifier().out_features == 10  # unchanged
    model.reset_classifier(np.int64(5))
    assert type(model.num_classes) is int and model.get_classifier().out_features == 5
    assert model.head.global_pool.pool_type == 'avg'  # None: unchanged
    model.reset_classifier(0, 'max')
    assert model.num_classes == 0 and model.head.global_pool.pool_type == 'max'


def test_switches_take_bools_only():
    model = _create()
    for method in (model.set_grad_checkpointing, model.set_memory_efficient):
        for value in ('false', 0, None):
            with pytest.raises(ConfigError, match=f'enable={value!r} is invalid'):
                method(value)
    assert model.grad_checkpointing is False and model.cfg.memory_efficient is False
    model.set_grad_checkpointing(np.bool_(True))
    assert model.grad_checkpointing is True


def test_cfg_must_be_a_config():
    from timm_resattn.models.resattnet import ResidualAttentionNet
    with pytest.raises(ConfigError, match='cfg='):
        ResidualAttentionNet('resattnet56_cifar')


def test_unknown_keyword_is_still_a_type_error():
    """ timm and the command layer rely on a TypeError for an unknown keyword. """
    with pytest.raises(TypeError, match='nonsense_arg'):
        _create(nonsense_arg=1)
    with pytest.raises(TypeError, match='nonsense_arg'):
        _hub(nonsense_arg=1)


def test_one_description_of_every_argument():
    """ ``MODEL_ARGS`` describes exactly every config field and every constructor argument. """
    from timm_resattn.models.config import CONSTRUCTOR_ARGS, MODEL_ARGS, ResAttnCfg
    from timm_resattn.models.resattnet import ResidualAttentionNet
    params = [n for n, p in inspect.signature(ResidualAttentionNet.__init__).parameters.items()
              if n not in ('self', 'cfg') and p.kind is not p.VAR_KEYWORD]
    assert set(CONSTRUCTOR_ARGS) == set(params)
    assert set(MODEL_ARGS.names()) == set(params) | {f.name for f in fields(ResAttnCfg)}


def test_unit_choices_follow_the_unit_types(monkeypatch):
    from timm_resattn.layers import units
    from timm_resattn.models.config import MODEL_ARGS
    monkeypatch.setitem(units.UNIT_TYPES, 'other', units.PreActBottleneck)
    assert MODEL_ARGS.check_value('unit', 'other') == 'other'
    with pytest.raises(ConfigError, match="'other'"):  # the message lists the registered units
        MODEL_ARGS.check_value('unit', 'missing')


# --- --model-kwargs ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('items', [['num_classes=3', 'num_classes=4'], ['p=1', 'p =1'],
                                   ['attention_residual=False', 'attention_residual=False']])
def test_model_kwargs_key_given_twice(items):
    from timm_resattn.cli.common import parse_model_kwargs
    key = items[0].split('=')[0].strip()
    with pytest.raises(CommandError, match=f'--model-kwargs: {key} is given twice'):
        parse_model_kwargs(items)


def test_model_kwargs_values_checked_and_normalised():
    from timm_resattn.cli.common import parse_model_kwargs
    out = parse_model_kwargs(['num_classes=7', 'stage_modules=[1, 2, 1]', 'global_pool=fastavg', 'act_layer=silu',
                              'output_stride=None'])
    assert out == dict(num_classes=7, stage_modules=(1, 2, 1), global_pool='fastavg', act_layer='silu',
                       output_stride=None)
    # None would be dropped by timm.create_model, giving the default silently
    with pytest.raises(ConfigError, match='--model-kwargs: num_classes=None is invalid'):
        parse_model_kwargs(['num_classes=None'])
    with pytest.raises(ConfigError, match=r'--model-kwargs: output_stride=16\.0 is invalid'):
        parse_model_kwargs(['output_stride=16.0'])


@pytest.mark.parametrize('kwargs, needle', [
    (['zero_init_last=no'], "zero_init_last='no' is invalid"),
    (['global_pool=nonsense'], "global_pool='nonsense' is invalid"),
    (['num_classes=3', 'num_classes=4'], 'num_classes is given twice'),
    (['num_classes=None'], 'num_classes=None is invalid'),
])
def test_command_refuses(tmp_path, capsys, kwargs, needle):
    from timm_resattn.cli import main as cli_main
    img = tmp_path / 'a.png'
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(img)
    assert cli_main(['classify', str(img), '--model', CIFAR, '--model-kwargs', *kwargs]) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: ') and needle in err and 'Traceback' not in err, err


# --- torch.hub ----------------------------------------------------------------------------------------------------

def test_hub_builds_as_create_model_does():
    model = _hub(num_classes=np.int64(4), zero_init_last=np.bool_(True), global_pool='fastmax')
    assert type(model.num_classes) is int and model.num_classes == 4
    assert model.head.global_pool.pool_type == 'fastmax'
    assert model.pretrained_cfg['architecture'] == CIFAR
