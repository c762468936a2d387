""" Residual Attention Network

Paper: `Residual Attention Network for Image Classification` - Fei Wang, Mengqing Jiang, Chen Qian, Shuo Yang,
Cheng Li, Honggang Zhang, Xiaogang Wang, Xiaoou Tang (CVPR 2017), https://arxiv.org/abs/1704.06904

The ImageNet nets reproduce the authors' official Caffe deploy definitions
(https://github.com/fwang91/residual-attention-network, ``imagenet_model/*-deploy.prototxt``) layer for layer:
same structure, same learnable-parameter count and the same function given the same weights
(``timm_resattn.convert.caffe`` maps the authors' Caffe blobs onto these modules). Where the paper and the official
files disagree, the files win; each entrypoint's docstring says where.

Beyond the paper: ``output_stride`` 8/16 for dense prediction and ``memory_efficient`` training (selective
activation checkpointing of each stage block on public torch APIs, ``layers.memory``; ``ResidualAttentionNet`` and
``ResAttnCfg`` say what changes).

Copyright the timm-resattn authors, Apache-2.0.
"""
import dataclasses
import json
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import BatchNormAct2d, ClassifierHead, LayerType, get_act_layer
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from timm.models._features import feature_take_indices  # no public name for it in timm

from ..convert.pytorchcv import convert_pytorchcv_state_dict, is_pytorchcv_state_dict
from ..layers.attention import create_max_pool
from ..layers.input_size import InputSizeCheck
from ..layers.memory import SWITCH, checkpoint_blocks, set_memory_efficient
from ..layers.units import get_unit_type
from ..errors import ConfigError
from ..schema import Any_, Bool, Schema
from ..weights import (
    ARCH_CFG_KEY, ARCHITECTURE_KEY, checked_pretrained_filter, load_checked, pretrained_kwargs, unwrap_state_dict,
)
from .config import ResAttnCfg, check_model_args
from .stages import create_stages

__all__ = ['ResidualAttentionNet', 'model_cfgs', 'checkpoint_filter_fn']

# the nets of the authors' Caffe deploy files (timm_resattn.convert.caffe converts their weights)
CAFFE_NETS = ('resattnet56', 'resattnet92', 'resattnext56', 'resattnext92')
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def _check_head(num_classes: int, global_pool: str) -> None:
    """ timm's ``ClassifierHead`` has no classifier for unpooled features: ``global_pool=''`` needs
    ``num_classes=0`` (the pair timm uses for a net's unpooled features). """
    if not global_pool and num_classes:
        raise ConfigError(f"global_pool='' is invalid with num_classes={num_classes}: expected num_classes=0 with it "
                          f"(no pooling: the head returns the unpooled features), or a pool type such as 'avg'")


def _layer_name(layer: Any) -> str:
    """ The name of a layer class or factory (``nn.ReLU`` -> 'ReLU'; a ``functools.partial`` by its function's). """
    return getattr(layer, '__name__', None) or _layer_name(getattr(layer, 'func', type(layer)))


class ResidualAttentionNet(nn.Module):
    """ Residual Attention Network (Wang et al., CVPR 2017).

    Layout: ``stem`` -> ``stages.0..N-1`` (each ``nn.Sequential`` of residual units and Attention Modules) ->
    ``norm`` (final BN-ReLU of pre-activation nets) -> ``head`` (global pool, dropout, fc).

    ``output_stride`` 8 or 16 (dense prediction; not in the paper or the official files) follows timm's ResNet
    (``ResAttnCfg.stride_schedule``: ImageNet nets at 16 dilate ``stages.3`` by 2; at 8 ``stages.2`` by 2 and
    ``stages.3`` by 4). What changes and what does not:

    * Trunk side (plain, tail, pre/trunk/post units): dilated, computing the stride-32 net's function densely. The
      official nets have no Attention Module in their last stage, so at 16 the whole net is exactly the stride-32
      net sampled densely.
    * Soft-mask branch: not dilated. A mask in a dilated stage (the official nets at 8: ``stages.2``'s) keeps its
      units and pool levels and runs on the larger map as the stride-32 net would at an input larger by the
      stage's dilation, so it sees less context relative to the trunk (the one-level ``stages.2`` mask pools to
      1/16 of the input instead of 1/32); stride-32 weights load but compute a different mask there.
    * Unchanged: every parameter name and shape (stride-32 weights load with ``strict=True``). ``feature_info``
      reductions (at 8: 2, 4, 8, 8, 8) and ``min_input_size`` follow the layout. Refused (``ConfigError``): any
      value but 8/16/32, and any value for the CIFAR nets (stride 4 overall).
    """

    def __init__(
            self,
            cfg: ResAttnCfg,
            num_classes: int = 1000,
            in_chans: int = 3,
            global_pool: str = 'avg',
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            act_layer: LayerType = nn.ReLU,
            zero_init_last: bool = False,
            output_stride: Optional[int] = None,
            device=None,
            dtype=None,
            **kwargs,
    ):
        """
        Args:
            cfg: Architecture config (a ``model_cfgs`` row).
            num_classes: Number of classifier outputs (0 for no classifier).
            in_chans: Number of input image channels.
            global_pool: Global pooling type ('avg', 'max', 'avgmax', 'catavgmax', their 'fast' forms such as
                'fastavg', or '' for none; ``config.POOL_TYPES``).
            drop_rate: Dropout rate before the classifier.
            drop_path_rate: Stochastic depth rate, linear over the trunk's blocks; mask-branch units never drop.
            act_layer: Activation layer of every BN-act (ReLU officially): a name ``timm.layers.get_act_layer``
                knows, an ``nn.Module`` class or a function returning a module.
            zero_init_last: Zero-init the last BN/conv of each residual unit.
            output_stride: Stride of the final features, 8, 16 or 32 (None: the net's own, 32 for the ImageNet
                nets), for dense prediction as in timm's ResNet: the later stages keep their resolution and dilate
                their trunk's 3x3 convs instead (see the class docstring). Same parameters at every value.
                ImageNet-layout nets only.
            **kwargs: Overrides of ``cfg`` fields (e.g. ``attention_residual=False``, ``mask_act='spatial'``).

        Every argument and field is checked against ``MODEL_ARGS`` (``models.config``: the one typed description of
        them) before anything is built: a ``ConfigError`` names the first bad one; an unknown keyword is a
        ``TypeError``. numpy scalars are accepted (``num_classes=np.int64(10)``); bools are not integers, strings
        are not bools.
        """
        super().__init__()
        if not isinstance(cfg, ResAttnCfg):
            raise ConfigError(f'cfg={cfg!r:.200} is invalid: expected a ResAttnCfg (a row of model_cfgs)')
        args = check_model_args(  # the constructor's own arguments (the config's: ResAttnCfg.validate)
            num_classes=num_classes, in_chans=in_chans, global_pool=global_pool, drop_rate=drop_rate,
            drop_path_rate=drop_path_rate, act_layer=act_layer, zero_init_last=zero_init_last,
            output_stride=output_stride, device=device, dtype=dtype,
        )
        num_classes, in_chans, global_pool, drop_rate, drop_path_rate, zero_init_last, output_stride = (
            args[k] for k in ('num_classes', 'in_chans', 'global_pool', 'drop_rate', 'drop_path_rate',
                              'zero_init_last', 'output_stride'))
        _check_head(num_classes, global_pool)
        dd = {'device': device, 'dtype': dtype}
        if kwargs:
            cfg = ResAttnCfg.from_overrides(cfg, kwargs)
        self.cfg = cfg = cfg.validate()
        self.num_classes = num_classes
        self.in_chans = in_chans  # read by timm (get_model_input_config) and the exporters
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        act_layer = get_act_layer(act_layer)
        # recorded with the weights (weights_metadata): weights written for another activation compute another function
        self.act_name = _layer_name(act_layer)
        norm_layer = BatchNormAct2d
        preact = get_unit_type(cfg.unit).preactivates_input
        self.output_stride = output_stride  # None: the net's own (recorded by the Hub export)
        self.min_input_size = cfg.min_input_size(output_stride)

        # stem
        self.stem = nn.Sequential()
        self.stem.add_module('check', InputSizeCheck(self.min_input_size))  # no parameters
        if cfg.stem_type == 'imagenet':
            self.stem.add_module('conv', nn.Conv2d(in_chans, cfg.stem_chs, 7, stride=2, padding=3, bias=False, **dd))
            self.stem.add_module('norm', norm_layer(cfg.stem_chs, act_layer=act_layer, **dd))
            # Caffe max-pool, 3x3/s2 without padding in ceil mode: 112 -> 56 (not 55) at 224 (or pytorchcv's pad 1)
            self.stem.add_module('pool', create_max_pool(cfg.max_pool))
            self.feature_info = [dict(num_chs=cfg.stem_chs, reduction=2, module='stem.norm')]
        else:
            self.stem.add_module('conv', nn.Conv2d(in_chans, cfg.stem_chs, 3, padding=1, bias=False, **dd))
            self.feature_info = [dict(num_chs=cfg.stem_chs, reduction=1, module='stem.conv')]

        # stages (models.stages), then the pre-activation nets' final BN-ReLU ("post_res_4_3/bn"; NeXt units end
        # in a ReLU already) and the classifier
        self.stages, stage_info = create_stages(
            cfg, cfg.stem_chs, output_stride, drop_path_rate=drop_path_rate, act_layer=act_layer, **dd)
        self.feature_info += stage_info
        self.num_features = self.head_hidden_size = num_features = cfg.stage_chs[-1]
        self.norm = norm_layer(num_features, act_layer=act_layer, **dd) if preact else nn.Identity()
        if preact:
            self.feature_info[-1]['module'] = 'norm'
        self.head = ClassifierHead(num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate, **dd)

        self.init_weights(zero_init_last=zero_init_last)
        if cfg.memory_efficient:
            self.set_memory_efficient(True)

    @torch.jit.ignore
    def init_weights(self, zero_init_last: bool = False):
        """ Initialise conv weights (``cfg.conv_init``) and BN affine params; optionally zero units' last layers. """
        zero_init_last = check_model_args(zero_init_last=zero_init_last)['zero_init_last']
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                if self.cfg.conv_init == 'kaiming_uniform_fan_in':
                    nn.init.kaiming_uniform_(m.weight)  # pytorchcv's ResAttNet._init_params
                else:
                    nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_last:
            for m in self.modules():
                if hasattr(m, 'zero_init_last'):
                    m.zero_init_last()

    @classmethod
    def registered_configs(cls) -> Dict[str, ResAttnCfg]:
        """ Return the config of every registered variant (``model_cfgs``). """
        return model_cfgs

    @torch.jit.ignore
    def weights_metadata(self) -> Dict[str, str]:
        """ Return what weight files written from this model record: its architecture and, as JSON, every config
        field that changes its function (``ResAttnCfg.function_fields``) and the activation (``act_layer``, by the
        name of the class or function it resolved to); checked on load by ``weights.check_metadata``. The head's
        ``global_pool`` is not recorded: like ``num_classes`` it is the fine-tuner's choice (``global_pool=''`` for
        a backbone).
        """
        arch = (getattr(self, 'pretrained_cfg', None) or {}).get('architecture') or ''
        fields = dict(self.cfg.function_fields(), act_layer=self.act_name)
        return {ARCHITECTURE_KEY: arch, ARCH_CFG_KEY: json.dumps(fields, sort_keys=True)}

    @torch.jit.ignore
    def filter_state_dict(self, state_dict: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        """ Return ``state_dict`` in this model's names (``checkpoint_filter_fn``: unwrapping, pytorchcv keys). """
        return checkpoint_filter_fn(state_dict, self)

    @torch.jit.ignore
    def load_pretrained(self, checkpoint_path: str) -> None:
        """ Load a weight file through the checked loader, with timm's num_classes / in_chans adaptation.

        timm's ``load_pretrained`` calls this for file and URL weights (our pretrained cfgs set ``custom_load``):
        ``pretrained_cfg_overlay=dict(file=...)``, train.py's ``--pretrained-path``, a downloaded release.
        """
        load_checked(self, checkpoint_path, adapt=True)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        """ Parameter-group regexes (stem, per-stage or per-block groups, final norm) for layer-wise lr decay. """
        return dict(
            stem=r'^stem',
            blocks=[
                (r'^stages\.(\d+)' if coarse else r'^stages\.(\d+)\.(\d+)', None),
                (r'^norm', (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        """ Enable or disable activation checkpointing of each stage's blocks during training: each block keeps
        only its input and is recomputed whole in backward (``layers.memory.checkpoint_blocks``: non-reentrant, BN
        statistics updated once per step, not again by the recompute). While it is on it takes precedence over
        ``memory_efficient``, which keeps more (the convolutions' outputs): the blocks are checkpointed whole, not
        selectively.
        """
        self.grad_checkpointing = SWITCH.check_value('enable', enable)

    @torch.jit.ignore
    def set_memory_efficient(self, enable: bool = True):
        """ Switch memory-lean training (``ResAttnCfg.memory_efficient``, ``layers.memory``) on or off in place.

        In training with grad enabled, each block of each stage then runs under a selective activation checkpoint
        that keeps only the convolutions' outputs and recomputes BN, ReLU, sigmoid, adds and resampling in backward
        (``MemoryLeanSequential``). Parameters, buffers, outputs and BN statistics are unchanged.
        """
        enable = SWITCH.check_value('enable', enable)
        set_memory_efficient(self, enable)
        self.cfg = dataclasses.replace(self.cfg, memory_efficient=enable)

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        """ Return the classifier layer (``head.fc``). """
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None):
        """ Replace the classifier with a new one for ``num_classes`` (0: none), optionally changing the pooling
        (None: unchanged). Both are checked as the constructor's arguments are (``MODEL_ARGS``). """
        num_classes = check_model_args(num_classes=num_classes)['num_classes']
        if global_pool is not None:
            global_pool = check_model_args(global_pool=global_pool)['global_pool']
        _check_head(num_classes, self.head.global_pool.pool_type if global_pool is None else global_pool)
        self.num_classes = num_classes
        self.head.reset(num_classes, global_pool)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """ Forward features that returns intermediates.

        Args:
            x: Input image tensor.
            indices: Take last n feature levels if int, all if None, select matching indices if sequence
                (0 = stem, i = stage i - 1).
            norm: Apply the final norm (pre-activation nets) to the last stage's intermediate.
            stop_early: Stop iterating over stages when the last desired intermediate is reached.
            output_fmt: Shape of intermediate feature outputs ('NCHW' only).
            intermediates_only: Only return intermediate features.
        """
        assert output_fmt in ('NCHW',), 'Output shape must be NCHW.'
        intermediates = []
        num_stages = len(self.stages)
        take_indices, max_index = feature_take_indices(num_stages + 1, indices)

        if hasattr(self.stem, 'norm'):
            x = self.stem.norm(self.stem.conv(self.stem.check(x)))
            if 0 in take_indices:
                intermediates.append(x)
            x = self.stem.pool(x)
        else:
            x = self.stem(x)
            if 0 in take_indices:
                intermediates.append(x)

        if torch.jit.is_scripting() or not stop_early:  # can't slice blocks in torchscript
            stages = self.stages
        else:
            stages = self.stages[:max_index]
        feat_idx = 0
        for feat_idx, stage in enumerate(stages, start=1):
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint_blocks(stage, x)
            else:
                x = stage(x)
            if feat_idx in take_indices:
                if feat_idx == num_stages and norm:
                    intermediates.append(self.norm(x))
                else:
                    intermediates.append(x)

        if intermediates_only:
            return intermediates
        if feat_idx == num_stages:
            x = self.norm(x)
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ):
        """ Prune layers not required for specified intermediates. """
        num_stages = len(self.stages)
        take_indices, max_index = feature_take_indices(num_stages + 1, indices)
        self.stages = self.stages[:max_index]  # truncate blocks w/ stem as idx 0
        if prune_norm or max_index < num_stages:
            self.norm = nn.Identity()
        if max_index < num_stages:
            # features now end at the last kept level; the head was sized for the final features, so it goes too
            self.num_features = self.head_hidden_size = self.feature_info[max_index]['num_chs']
            prune_head = True
        if prune_head:
            self.head = ClassifierHead(self.num_features, 0, pool_type='')
            self.num_classes = 0
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """ Return the unpooled final feature map (after the final BN-ReLU of pre-activation nets). """
        x = self.stem(x)  # its first module checks the input size
        if self.grad_checkpointing and not torch.jit.is_scripting():
            for stage in self.stages:
                x = checkpoint_blocks(stage, x)
        else:
            x = self.stages(x)
        x = self.norm(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """ Return the logits (or the pooled features if ``pre_logits``) of a ``forward_features`` output. """
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ Return the logits of an image batch. """
        x = self.forward_features(x)
        x = self.forward_head(x)
        return x


model_cfgs = dict(
    # ImageNet nets of the official Caffe files
    resattnet56=ResAttnCfg(unit='preact', stage_modules=(1, 1, 1, 0)),
    resattnet92=ResAttnCfg(unit='preact', stage_modules=(1, 2, 3, 0)),
    resattnext56=ResAttnCfg(unit='next', stage_modules=(1, 1, 1, 0), bottle_ratio=0.5, groups=32),
    resattnext92=ResAttnCfg(unit='next', stage_modules=(1, 2, 3, 0), bottle_ratio=0.5, groups=32),
    # Attention-56 as pytorchcv wires it: the net of the one public ImageNet checkpoint (a community port)
    resattnet56_pcv=ResAttnCfg(
        unit='preact', stage_modules=(1, 1, 1, 0), mask_wiring='pytorchcv', max_pool='torch',
        conv_init='kaiming_uniform_fan_in',
    ),
    # AttentionInception-56: the Attention-56 skeleton with our simplified Inception unit (no official definition)
    resattninc56=ResAttnCfg(unit='inception', stage_modules=(1, 1, 1, 0), bottle_ratio=0.125),
    # CIFAR family (paper §4.1); widths and mask pooling are our reading (the paper gives neither)
    resattnet56_cifar=ResAttnCfg.cifar(1),
    resattnet92_cifar=ResAttnCfg.cifar(2),
    resattnet128_cifar=ResAttnCfg.cifar(3),
    resattnet164_cifar=ResAttnCfg.cifar(4),
    resattnet236_cifar=ResAttnCfg.cifar(6),
    resattnet452_cifar=ResAttnCfg.cifar(6, p=2, t=4, r=3),
)


def checkpoint_filter_fn(state_dict: Dict[str, Any], model: ResidualAttentionNet) -> Dict[str, torch.Tensor]:
    """ Unwrap training checkpoints and strip wrapper prefixes (``weights.unwrap_state_dict``: EMA weights first, as
    timm and every file route here; ``module.``, ``_orig_mod.``). Our own state_dicts pass through unchanged.

    pytorchcv ResAttNet weights (recognised by ``features.init_block.*`` keys; e.g. the community resattnet56
    checkpoint, a ``{'state_dict': {'module.features...': ...}, 'optimizer': ..., ...}`` training dict) are renamed
    to ours (``timm_resattn.convert.pytorchcv``) when ``model`` is wired like pytorchcv (``resattnet56_pcv``), and
    rejected with a ``ConversionError`` (a ``ValueError``) otherwise. Caffe weights go through
    ``timm_resattn.convert.caffe`` first.
    """
    out = unwrap_state_dict(state_dict)
    if is_pytorchcv_state_dict(out):
        out = convert_pytorchcv_state_dict(out, model)
    return out


_FEATURES = Schema(dict(features_only=Bool(), feature_cfg=Any_(lambda v: isinstance(v, dict), 'a dict')))


def _check_out_indices(out_indices: Any, num_levels: int) -> None:
    """ timm's ``out_indices`` for ``features_only``: an int N (the last N levels) or a tuple/list of level indices
    (negative from the end), checked against the net's ``num_levels`` feature levels. """
    if isinstance(out_indices, (tuple, list)):
        ok = len(out_indices) > 0 and all(
            isinstance(i, int) and not isinstance(i, bool) and -num_levels <= i < num_levels for i in out_indices)
    else:
        ok = isinstance(out_indices, int) and not isinstance(out_indices, bool) and 1 <= out_indices <= num_levels
    if not ok:
        raise ConfigError(
            f'out_indices={out_indices!r:.200} is invalid: expected an int N in [1, {num_levels}] (the last N '
            f'feature levels) or a non-empty tuple of level indices in [{-num_levels}, {num_levels - 1}] (this net '
            f'has {num_levels} feature levels)')


def _create_resattnet(variant: str, pretrained: bool = False, **kwargs) -> ResidualAttentionNet:
    # timm's own features_only / feature_cfg / out_indices, checked here as timm does not check them (the model's
    # arguments are checked by its constructor)
    kwargs.update(_FEATURES.check({k: kwargs[k] for k in ('features_only', 'feature_cfg') if k in kwargs}))
    num_levels = model_cfgs[variant].num_stages + 1
    feature_cfg = {'flatten_sequential': True, 'out_indices': tuple(range(num_levels)), **kwargs.pop('feature_cfg', {})}
    if kwargs.get('features_only'):
        _check_out_indices(kwargs.get('out_indices', feature_cfg['out_indices']), num_levels)
    if pretrained:  # fails loudly for a tag without weights
        hint = (f'The authors\' Caffe weights of this net (if you have them) convert with `timm-resattn convert caffe '
                f'IN.caffemodel OUT.safetensors --model {variant}`.' if variant in CAFFE_NETS else '')
        kwargs = pretrained_kwargs(variant, kwargs, no_weights_hint=hint)
    return build_model_with_cfg(
        ResidualAttentionNet,
        variant,
        pretrained,
        model_cfg=model_cfgs[variant],
        pretrained_filter_fn=checked_pretrained_filter(checkpoint_filter_fn, cache_dir=kwargs.get('cache_dir')),
        feature_cfg=feature_cfg,
        **kwargs,
    )


def _cfg(url: str = '', **kwargs) -> Dict[str, Any]:
    return {
        'url': url,
        'num_classes': 1000,
        'input_size': (3, 224, 224),
        'pool_size': (7, 7),
        'crop_pct': 0.875,
        'interpolation': 'bilinear',
        'mean': IMAGENET_DEFAULT_MEAN,
        'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'stem.conv',
        'classifier': 'head.fc',
        'paper_ids': 'arXiv:1704.06904',
        'paper_name': 'Residual Attention Network for Image Classification',
        'origin_url': 'https://github.com/fwang91/residual-attention-network',
        'license': 'apache-2.0',
        # file and url weights go through ResidualAttentionNet.load_pretrained (timm_resattn.weights' checked loader)
        'custom_load': True,
        **kwargs,
    }


def _cifar_cfg(url: str = '', **kwargs) -> Dict[str, Any]:
    return _cfg(
        url=url,
        num_classes=10,
        input_size=(3, 32, 32),
        pool_size=(8, 8),
        crop_pct=1.0,
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
        **kwargs,
    )


default_cfgs = generate_default_cfgs({
    # No weights were ever published by the authors for these architectures.
    'resattnet56.untrained': _cfg(),
    'resattnet92.untrained': _cfg(test_input_size=(3, 320, 320), test_crop_pct=1.0),
    'resattnext56.untrained': _cfg(),
    'resattnext92.untrained': _cfg(),
    # The one public ImageNet checkpoint of a Residual Attention Network: a community port, not the authors'.
    'resattnet56_pcv.pq_in1k': _cfg(
        url='https://github.com/phamquiluan/ResidualAttentionNetwork/releases/download/v0.1.0/resattnet56.pth',
        num_classes=1000,
        # its evaluation: Resize(256) + CenterCrop(224), bilinear (torchvision's default), ImageNet mean/std
        crop_pct=0.875,
        interpolation='bilinear',
        mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD,
        origin_url='https://github.com/phamquiluan/ResidualAttentionNetwork',
        license='unknown',  # the repository declares no license
        notes=(
            'Weights of the community resattnet56 of phamquiluan/ResidualAttentionNetwork (release v0.1.0), '
            "trained with pytorchcv's ResAttNet-56 (not the authors' Caffe net, whose weights were never released).",
            'ImageNet-1k val 77.02 top-1 / 93.57 top-5 at 224 (Resize 256, CenterCrop 224), as reported by its '
            'author, not measured here.',
        ),
    ),
    'resattninc56.untrained': _cfg(input_size=(3, 299, 299), pool_size=(10, 10)),
    'resattnet56_cifar.untrained': _cifar_cfg(),
    'resattnet92_cifar.untrained': _cifar_cfg(),
    'resattnet128_cifar.untrained': _cifar_cfg(),
    'resattnet164_cifar.untrained': _cifar_cfg(),
    'resattnet236_cifar.untrained': _cifar_cfg(),
    'resattnet452_cifar.untrained': _cifar_cfg(),
})


@register_model
def resattnet56(pretrained: bool = False, **kwargs) -> ResidualAttentionNet:
    """ Attention-56 (ImageNet), pre-activation units; the official ``Attention-56-deploy.prototxt``.

    Params and MACs: ``timm-resattn list`` (the paper's 31.9M counts BN running statistics too).
    Modules per stage 1/1/1, p=1 t=2 r=1, mask max-pool levels 3/2/1.
    Differs from the file only in the final pool: a global average pool at every size (the file's fixed 7x7
    AVE pool is global at 224 only).
    """
    return _create_resattnet('resattnet56', pretrained, **kwargs)


@register_model
def resattnet56_pcv(pretrained: bool = False, **kwargs) -> ResidualAttentionNet:
    """ Attention-56 wired as the ``pytorchcv`` package's ``resattnet56`` (v0.0.74), the architecture of the only
    public ImageNet checkpoint (``resattnet56_pcv.pq_in1k``: a community port's weights, phamquiluan/
    ResidualAttentionNetwork; the accuracy its author reports is in the pretrained cfg's notes).

    The parameters of ``resattnet56``, pytorchcv's function (``PytorchcvEncoderDecoderMask`` has the
    details): every 3x3/s2 max-pool pads by 1 in floor mode (official: no padding, ceil mode), each mask skip adds
    its own input (``interp(x) + (s + unit(s))``), the trunk output is added before the mask head
    (``M = head(interp(x -> T) + T)``), and convs init with ``kaiming_uniform_``. Unlike pytorchcv (fixed x2
    upsampling, fixed 7x7 pool: 224 px only) it runs at any size: exact-size bilinear upsampling (identical where
    pytorchcv runs) and a global pool. ``pretrained=True`` downloads the released file; ``checkpoint_filter_fn``
    renames pytorchcv's parameters to ours.
    """
    return _create_resattnet('resattnet56_pcv', pretrained, **kwargs)


@register_model
def resattnet92(pretrained: bool = False, **kwargs) -> ResidualAttentionNet:
    """ Attention-92 (ImageNet), pre-activation units; the official ``Attention-92-deploy.prototxt``.

    Params and MACs: ``timm-resattn list``. The paper's Table 7 says 51.3M params: the official file has more
    (``tests/test_models.py`` checks its exact count), and we follow the file. The paper evaluates at 320x320, where
    the file's fixed 7x7 AVE pool would give 2048x4x4 features that its 2048-input classifier cannot take: we pool
    globally at every size, the reading that keeps the classifier.
    """
    return _create_resattnet('resattnet92', pretrained, **kwargs)


@register_model
def resattnext56(pretrained: bool = False, **kwargs) -> ResidualAttentionNet:
    """ AttentionNeXt-56 (ImageNet), ResNeXt 32x(C/64)d post-activation units; ``AttentionNeXt-56-deploy.prototxt``.

    Params and MACs: ``timm-resattn list`` (the paper's 31.9M repeats Attention-56's figure; we follow the file).
    """
    return _create_resattnet('resattnext56', pretrained, **kwargs)


@register_model
def resattnext92(pretrained: bool = False, **kwargs) -> ResidualAttentionNet:
    """ AttentionNeXt-92 (ImageNet), ResNeXt units; ``AttentionNeXt-92-deploy.prototxt`` (not in the paper).

    Params and MACs: ``timm-resattn list``. The published file is broken: its classifier reads ``ave_pool_gather``,
    which no layer produces; we read the only sensible input, the average-pooled features ``ave_pool``.
    """
    return _create_resattnet('resattnext92', pretrained, **kwargs)


@register_model
def resattninc56(pretrained: bool = False, **kwargs) -> ResidualAttentionNet:
    """ AttentionInception-56 (paper §4.2, Table 7: 31.9M params, 6.3 GFLOPs, evaluated at 299x299).

    No official definition exists: this is the Attention-56 skeleton with our simplified pre-activation
    Inception-ResNet unit (``PreActInceptionUnit``: 1x1 / 1x1-3x3 / 1x1-3x3-3x3 branches of width C/8, C/8 and
    C/16-C/8-C/8, merged by a 1x1 conv, residual add), a little below the paper's params and FLOPs
    (docs/architecture.md); params and MACs at its default 299: ``timm-resattn list``.
    """
    return _create_resattnet('resattninc56', pretrained, **kwargs)


@register_model
def resattnet56_cifar(pretrained: bool = False, **kwargs) -> ResidualAttentionNet:
    """ CIFAR Attention-56 (m=1, p=1 t=2 r=1): the net of the paper's ablations (Tables 1, 3 and 4).

    The paper gives no param count (``timm-resattn list`` has ours). Paper, CIFAR-10 error: 5.52%; 5.89% with naive
    attention learning (``attention_residual=False``), 6.24% / 6.33% with channel / spatial masks (``mask_act``),
    6.48% with local-convolution masks (``mask_type='local'``). No weights are published.
    """
    return _create_resattnet('resattnet56_cifar', pretrained, **kwargs)


@register_model
def resattnet92_cifar(pretrained: bool = False, **kwargs) -> ResidualAttentionNet:
    """ CIFAR Attention-92 (m=2, p=1 t=2 r=1; paper Tables 3, 5 and 6).

    Table 6 gives 1.9M params; ours (``timm-resattn list``) are a few percent fewer (docs/architecture.md).
    Paper: 4.99% CIFAR-10 error (5.35% with naive attention learning), 21.71% on CIFAR-100; 5.15% to 15.75% with
    10% to 70% label noise. No weights are published.
    """
    return _create_resattnet('resattnet92_cifar', pretrained, **kwargs)


@register_model
def resattnet128_cifar(pretrained: bool = False, **kwargs) -> ResidualAttentionNet:
    """ CIFAR Attention-128 (m=3, p=1 t=2 r=1; paper Table 3).

    Paper, CIFAR-10 error: 4.44% (5.57% with naive attention learning). No weights are published.
    """
    return _create_resattnet('resattnet128_cifar', pretrained, **kwargs)


@register_model
def resattnet164_cifar(pretrained: bool = False, **kwargs) -> ResidualAttentionNet:
    """ CIFAR Attention-164 (m=4, p=1 t=2 r=1; paper Table 3 and Fig. 4).

    Paper, CIFAR-10 error: 4.31% (7.18% with naive attention learning). No weights are published.
    """
    return _create_resattnet('resattnet164_cifar', pretrained, **kwargs)


@register_model
def resattnet236_cifar(pretrained: bool = False, **kwargs) -> ResidualAttentionNet:
    """ CIFAR Attention-236 (m=6, p=1 t=2 r=1; paper Table 6).

    Table 6 gives 5.1M params; ours (``timm-resattn list``) are a few percent fewer (docs/architecture.md).
    Paper: 4.14% CIFAR-10 error, 21.16% on CIFAR-100. No weights are published.
    """
    return _create_resattnet('resattnet236_cifar', pretrained, **kwargs)


@register_model
def resattnet452_cifar(pretrained: bool = False, **kwargs) -> ResidualAttentionNet:
    """ CIFAR Attention-452 (m=6, p=2 t=4 r=3; paper Table 6's †).

    Table 6 gives 8.6M params; ours (``timm-resattn list``) are a few percent more (docs/architecture.md).
    Paper: 3.90% CIFAR-10 error, 20.45% on CIFAR-100. No weights are published.
    """
    return _create_resattnet('resattnet452_cifar', pretrained, **kwargs)
