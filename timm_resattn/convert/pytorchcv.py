""" pytorchcv's ResAttNet weights -> timm-resattn names.

The ``pytorchcv`` package's ResAttNet (``pytorchcv.models.resattnet``, v0.0.74) is the network of the one public
ImageNet Residual Attention checkpoint (phamquiluan/ResidualAttentionNetwork, release v0.1.0). It holds the same
tensors as ``resattnet56_pcv`` under other names; :func:`convert_pytorchcv_state_dict` renames them.
``checkpoint_filter_fn`` of the model calls it when it recognises pytorchcv keys (:func:`is_pytorchcv_state_dict`).

The target model is checked by its config's fields (``model.cfg``), not its class: this module sits below the
models and never imports them.
"""
import re
from typing import Any, Dict, Optional

import torch.nn as nn

from ..errors import ConversionError

__all__ = ['is_pytorchcv_state_dict', 'convert_pytorchcv_state_dict']


# pytorchcv's ResAttNet (``pytorchcv.models.resattnet``) parameter names -> ours. Its residual unit (``ResBlock``)
# holds the same tensors as ``PreActBottleneck`` under other names.
_PCV_UNIT_RULES = (
    (re.compile(r'body\.conv([123])\.bn\.'), r'norm\1.'),
    (re.compile(r'body\.conv([123])\.conv\.'), r'conv\1.'),
    (re.compile(r'identity_conv\.'), 'downsample.'),
)
_PCV_TOP_LEVEL = (
    ('features.init_block.conv.conv.', 'stem.conv.'),
    ('features.init_block.conv.bn.', 'stem.norm.'),
    ('features.post_activ.bn.', 'norm.'),
    ('output.', 'head.fc.'),
)
_PCV_UNIT_KEY = re.compile(r'features\.stage(\d+)\.unit(\d+)\.(.+)')
_PCV_BLOCK = re.compile(r'block(\d+)\.(.+)')


def is_pytorchcv_state_dict(state_dict: Dict[str, Any]) -> bool:
    """ True if ``state_dict`` (already unwrapped, ``module.`` stripped) has pytorchcv's ResAttNet names. """
    return any(k.startswith('features.init_block.') for k in state_dict)


def _pcv_unit_key(rest: str) -> Optional[str]:
    for pattern, repl in _PCV_UNIT_RULES:
        if pattern.match(rest):
            return pattern.sub(repl, rest, count=1)
    return None


def _pcv_attention_key(rest: str, levels: int, r: int) -> Optional[str]:
    """ Map a key below one pytorchcv ``AttBlock`` (hourglass depth ``levels``) to our ``AttentionModule``.

    pytorchcv's hourglass, for depth L: ``down{l}`` = pool + r units (our ``mask.down.{l-1}``); ``up{l}`` = r units +
    x2 upsampling, where the deepest ``up{L}`` runs right after ``down{L}`` (the second half of our
    ``mask.down.{L-1}``'s 2r units) and ``up{l}``, l < L, follows the merge with ``skip{l+1}`` (our
    ``mask.up.{L-1-l}.up``); ``skip1`` is the trunk; ``skip{m}``, m >= 2, wraps one unit as ``skip1`` (our
    ``mask.up.{L-m}.skip``); ``middle_block`` is the mask head; ``final_block`` the post unit.
    """
    def units(prefix: str, tail: str, offset: int = 0) -> Optional[str]:
        m = _PCV_BLOCK.fullmatch(tail)
        if m is None:
            return None
        unit = _pcv_unit_key(m.group(2))
        return None if unit is None else f'{prefix}.{int(m.group(1)) - 1 + offset}.{unit}'

    m = re.fullmatch(r'init_blocks\.blocks\.(.+)', rest)
    if m:
        return units('pre', m.group(1))
    m = re.fullmatch(r'hg\.skip_seq\.skip1\.blocks\.(.+)', rest)
    if m:
        return units('trunk', m.group(1))
    m = re.fullmatch(r'hg\.skip_seq\.skip(\d+)\.skip1\.(.+)', rest)
    if m and 2 <= int(m.group(1)) <= levels:
        unit = _pcv_unit_key(m.group(2))
        return None if unit is None else f'mask.up.{levels - int(m.group(1))}.skip.{unit}'
    m = re.fullmatch(r'hg\.down_seq\.down(\d+)\.res_blocks\.blocks\.(.+)', rest)
    if m and 1 <= int(m.group(1)) <= levels:
        return units(f'mask.down.{int(m.group(1)) - 1}', m.group(2))
    m = re.fullmatch(r'hg\.up_seq\.up(\d+)\.res_blocks\.blocks\.(.+)', rest)
    if m and 1 <= int(m.group(1)) <= levels:
        level = int(m.group(1))
        if level == levels:
            return units(f'mask.down.{levels - 1}', m.group(2), offset=r)
        return units(f'mask.up.{levels - 1 - level}.up', m.group(2))
    m = re.fullmatch(r'middle_block\.conv([12])\.(bn|conv)\.(.+)', rest)
    if m:
        return f"mask.head.{'norm' if m.group(2) == 'bn' else 'conv'}{m.group(1)}.{m.group(3)}"
    m = re.fullmatch(r'final_block\.(.+)', rest)
    if m:
        unit = _pcv_unit_key(m.group(1))
        return None if unit is None else f'post.0.{unit}'
    return None


def _check_pytorchcv_target(model: nn.Module):
    cfg = getattr(model, 'cfg', None)
    ok = (
        hasattr(cfg, 'mask_wiring') and cfg.mask_wiring == 'pytorchcv' and cfg.max_pool == 'torch'
        and cfg.unit == 'preact' and cfg.stem_type == 'imagenet' and cfg.mask_type == 'encoder_decoder'
        and cfg.p == 1 and cfg.attention_residual and cfg.mask_act == 'mixed' and not cfg.stage_tail_units
    )
    if not ok:
        what = (
            f"a model with mask_wiring={cfg.mask_wiring!r}, max_pool={cfg.max_pool!r}, unit={cfg.unit!r}"
            if hasattr(cfg, 'mask_wiring') else f'a {type(model).__name__}'
        )
        raise ConversionError(
            f"these are pytorchcv ResAttNet weights (keys like 'features.init_block.conv.conv.weight'): they "
            f"compute pytorchcv's function only in an architecture wired like pytorchcv's, i.e. 'resattnet56_pcv' "
            f"(mask_wiring='pytorchcv', max_pool='torch', pre-activation units, p=1), not in {what}. The official "
            f"nets have the same parameter shapes but a different mask branch, so loading into them would run but "
            f"be wrong. Use timm.create_model('resattnet56_pcv', pretrained=True, "
            f"pretrained_cfg_overlay=dict(file='resattnet56.pth'))."
        )
    return cfg


def convert_pytorchcv_state_dict(state_dict: Dict[str, Any], model: nn.Module) -> Dict[str, Any]:
    """ Rename a pytorchcv ResAttNet state_dict (``pytorchcv.models.resattnet``, ``module.`` already stripped) to
    ``model``'s names. ``model`` must be wired like pytorchcv (``resattnet56_pcv``); unknown keys are an error.
    """
    cfg = _check_pytorchcv_target(model)
    out, unknown = {}, []
    for k, v in state_dict.items():
        new = None
        for src, dst in _PCV_TOP_LEVEL:
            if k.startswith(src):
                new = dst + k[len(src):]
                break
        if new is None:
            m = _PCV_UNIT_KEY.fullmatch(k)
            if m:
                stage, idx, rest = int(m.group(1)) - 1, int(m.group(2)) - 1, m.group(3)
                if 0 <= stage < len(cfg.stage_chs):
                    if idx < cfg.stage_units[stage]:
                        sub = _pcv_unit_key(rest)
                    else:
                        sub = _pcv_attention_key(rest, cfg.mask_levels[stage], cfg.r)
                    if sub is not None:
                        new = f'stages.{stage}.{idx}.{sub}'
        if new is None:
            unknown.append(k)
        else:
            out[new] = v
    if unknown:
        raise ConversionError(
            f'{len(unknown)} pytorchcv key(s) have no counterpart in this {type(model).__name__} '
            f'(stage units {cfg.stage_units}, modules {cfg.stage_modules}, mask levels {cfg.mask_levels}): '
            f'{unknown[:5]}{" ..." if len(unknown) > 5 else ""}'
        )
    return out
