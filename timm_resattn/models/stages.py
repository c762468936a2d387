""" How a ``ResAttnCfg`` becomes the stages of a Residual Attention Network.

Each stage is an ``nn.Sequential`` (``layers.memory.MemoryLeanSequential``) of ``stage_units`` plain residual units
(the first one changes width and stride), ``stage_modules`` Attention Modules and ``stage_tail_units`` plain units.
This module owns the per-block bookkeeping: the stride and dilation of each stage (``ResAttnCfg.stride_schedule``),
the linear drop-path rate over the trunk's blocks (mask-branch units never drop) and each stage's ``feature_info``.

Copyright the timm-resattn authors, Apache-2.0.
"""
from typing import Any, Dict, List, Optional, Tuple

import torch.nn as nn

from timm.layers import LayerType

from ..layers.attention import AttentionModule, EncoderDecoderMask, LocalConvMask, MaskHead, PytorchcvEncoderDecoderMask
from ..layers.memory import MemoryLeanSequential
from ..layers.units import dilation_kwargs, get_unit_type
from .config import ResAttnCfg

__all__ = ['create_stages', 'create_attention_module']


def create_attention_module(
        cfg: ResAttnCfg,
        stage_idx: int,
        chs: int,
        drop_path_rate: float,
        unit_kwargs: Dict[str, Any],
        dilation: int = 1,
) -> AttentionModule:
    """ The Attention Module of stage ``stage_idx`` (``chs`` channels): p pre units, t trunk units, the mask branch
    ``cfg`` describes (encoder-decoder or local, official or pytorchcv wiring) and p post units.

    In a dilated stage (``output_stride`` < 32) the trunk side (pre, trunk, post) is dilated; the mask branch keeps
    its undilated units and pooling levels and so runs as it would at a larger input.
    """
    trunk_dil_kwargs = dilation_kwargs(dilation, dilation)
    unit_type = get_unit_type(cfg.unit)

    def trunk_unit():
        return unit_type(chs, chs, drop_path_rate=drop_path_rate, **trunk_dil_kwargs, **unit_kwargs)

    def mask_unit():
        return unit_type(chs, chs, **unit_kwargs)

    def mask_head():
        return MaskHead(
            chs,
            preact=unit_type.preactivates_input,
            mask_act=cfg.mask_act,
            act_layer=unit_kwargs['act_layer'],
            device=unit_kwargs['device'],
            dtype=unit_kwargs['dtype'],
        )

    if cfg.mask_type == 'encoder_decoder':
        mask_cls = PytorchcvEncoderDecoderMask if cfg.mask_wiring == 'pytorchcv' else EncoderDecoderMask
        mask = mask_cls(cfg.mask_levels[stage_idx], mask_unit, mask_head(), r=cfg.r, max_pool=cfg.max_pool)
    else:
        mask = LocalConvMask(cfg.local_units(stage_idx), mask_unit, mask_head())
    return AttentionModule(
        pre=nn.Sequential(*[trunk_unit() for _ in range(cfg.p)]),
        trunk=nn.Sequential(*[trunk_unit() for _ in range(cfg.t)]),
        mask=mask,
        post=nn.Sequential(*[trunk_unit() for _ in range(cfg.p)]),
        attention_residual=cfg.attention_residual,
    )


def create_stages(
        cfg: ResAttnCfg,
        in_chs: int,
        output_stride: Optional[int] = None,
        drop_path_rate: float = 0.,
        act_layer: LayerType = nn.ReLU,
        device=None,
        dtype=None,
) -> Tuple[nn.Sequential, List[Dict[str, Any]]]:
    """ Build the stages of ``cfg`` on a stem with ``in_chs`` output channels.

    Returns:
        ``(stages, feature_info)``: an ``nn.Sequential`` of one ``MemoryLeanSequential`` per stage (an
        ``nn.Sequential`` that checkpoints its blocks selectively where ``memory_efficient`` is on), and one
        ``feature_info`` entry per stage (``module='stages.<i>'``).
    """
    unit_type = get_unit_type(cfg.unit)
    unit_kwargs = dict(
        bottle_ratio=cfg.bottle_ratio, groups=cfg.groups, act_layer=act_layer, device=device, dtype=dtype)
    num_blocks = sum(cfg.blocks_per_stage())
    dpr = [drop_path_rate * i / max(num_blocks - 1, 1) for i in range(num_blocks)]
    block_idx = 0
    prev_chs = in_chs
    stages, feature_info = [], []
    for stage_idx, (out_chs, (stride, first_dilation, dilation, reduction)) in enumerate(
            zip(cfg.stage_chs, cfg.stride_schedule(output_stride))):
        dil_kwargs = dilation_kwargs(dilation, dilation)
        blocks = []
        for unit_idx in range(cfg.stage_units[stage_idx]):
            blocks.append(unit_type(
                prev_chs,
                out_chs,
                stride=stride if unit_idx == 0 else 1,
                drop_path_rate=dpr[block_idx],
                **(dilation_kwargs(first_dilation, dilation) if unit_idx == 0 else dil_kwargs),
                **unit_kwargs,
            ))
            prev_chs = out_chs
            block_idx += 1
        for _ in range(cfg.stage_modules[stage_idx]):
            blocks.append(create_attention_module(
                cfg, stage_idx, out_chs, dpr[block_idx], unit_kwargs, dilation=dilation))
            block_idx += 1
        for _ in range(cfg.tail_units(stage_idx)):
            blocks.append(unit_type(
                out_chs, out_chs, drop_path_rate=dpr[block_idx], **dil_kwargs, **unit_kwargs))
            block_idx += 1
        stages.append(MemoryLeanSequential(*blocks))
        feature_info.append(dict(num_chs=out_chs, reduction=reduction, module=f'stages.{stage_idx}'))
    return nn.Sequential(*stages), feature_info
