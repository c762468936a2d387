""" Inference-time BatchNorm folding

``fuse_bn(model)`` folds every BatchNorm that directly follows a convolution (conv -> BN, nothing in between) into
that convolution: in eval mode the BN is a per-channel affine map ``y = s * x + t`` with
``s = gamma / sqrt(running_var + eps)`` and ``t = beta - s * running_mean``, so

    BN(conv(x; W, b)) = conv(x; s * W, s * b + t)

The BN module is then replaced by what is left of it: its activation for timm's ``BatchNormAct2d`` (the ReLU of
a BN-ReLU), ``nn.Identity`` for a plain ``nn.BatchNorm2d``.

Which BN follows which conv is read from the module's *structure*, never guessed from names: a rule per module
class (the conv/BN attribute pairs its ``forward`` applies back to back) plus one generic rule, consecutive
``Conv2d`` -> ``BatchNorm2d`` children of a plain ``nn.Sequential``. Rules ship for this package's units
(``PreActBottleneck``, ``NeXtBottleneck``, ``MaskHead``; the stem is a ``Sequential``). Other module types add
theirs with ``register_fuse_pairs`` (the benchmarks register timm's ResNet peers in ``benchmarks/fuse_peers.py``).

What cannot be folded (and stays a BN):

* the pre-activation BN-ReLU of a pre-activation unit (``norm1``) and of the mask head: a ReLU sits between it and
  the following conv, and its input (the raw residual sum) is also the next identity shortcut, so it cannot be
  folded into the preceding conv either;
* the final ``norm`` of the pre-activation nets (feeds the global pool, not a conv);
* a BN without running statistics (``track_running_stats=False`` normalises with batch statistics even in eval).

Copyright the timm-resattn authors, Apache-2.0.
"""
import copy
from typing import Dict, Iterator, List, Sequence, Tuple, Type

import torch
import torch.nn as nn

from timm.layers import BatchNormAct2d

from ..layers.attention import MaskHead
from ..layers.units import NeXtBottleneck, PreActBottleneck

__all__ = ['fuse_bn', 'find_conv_bn_pairs', 'register_fuse_pairs', 'fold_bn_into_conv', 'count_bn']

# (conv attribute, BN attribute) pairs each module class applies back to back in its forward, conv first.
_FUSE_PAIRS: Dict[Type[nn.Module], Tuple[Tuple[str, str], ...]] = {}


def register_fuse_pairs(cls: Type[nn.Module], pairs: Sequence[Tuple[str, str]]) -> None:
    """ Declare which ``(conv, bn)`` child attributes of ``cls`` are applied as ``bn(conv(x))`` with nothing between.

    Matching is by exact type (a subclass may override ``forward``), so subclasses need their own registration.

    Args:
        cls: Module class.
        pairs: ``(conv_attr, bn_attr)`` tuples; the conv output must feed only that BN.
    """
    _FUSE_PAIRS[cls] = tuple((str(c), str(b)) for c, b in pairs)


register_fuse_pairs(PreActBottleneck, [('conv1', 'norm2'), ('conv2', 'norm3')])
register_fuse_pairs(NeXtBottleneck, [('conv1', 'norm1'), ('conv2', 'norm2'), ('conv3', 'norm3')])  # downsample: Seq
register_fuse_pairs(MaskHead, [('conv1', 'norm2')])


def _foldable_conv(m: nn.Module) -> bool:
    # exact type: StdConv2d & co. transform their weight in forward and must not be touched
    return type(m) is nn.Conv2d and m.padding_mode == 'zeros'


def _foldable_bn(m: nn.Module) -> bool:
    return (
        type(m) in (nn.BatchNorm2d, BatchNormAct2d)
        and m.track_running_stats
        and m.running_mean is not None
        and m.running_var is not None
    )


def find_conv_bn_pairs(model: nn.Module) -> List[Tuple[str, str]]:
    """ Qualified names of every ``(conv, bn)`` pair of ``model`` where the BN directly follows the conv.

    Args:
        model: Any module.

    Returns:
        ``(conv_name, bn_name)`` pairs, in module order, each conv and each BN at most once.
    """
    pairs: List[Tuple[str, str]] = []
    seen = set()
    for name, module in model.named_modules():
        prefix = f'{name}.' if name else ''
        candidates: List[Tuple[str, str]] = []
        if type(module) is nn.Sequential:
            children = list(module.named_children())
            candidates += [(a, b) for (a, _), (b, _) in zip(children[:-1], children[1:])]
        candidates += list(_FUSE_PAIRS.get(type(module), ()))
        for conv_attr, bn_attr in candidates:
            conv = getattr(module, conv_attr, None)
            bn = getattr(module, bn_attr, None)
            if conv is None or bn is None or not _foldable_conv(conv) or not _foldable_bn(bn):
                continue
            if bn.num_features != conv.out_channels:
                continue
            key = (prefix + conv_attr, prefix + bn_attr)
            if key[0] in seen or key[1] in seen:
                continue
            seen.update(key)
            pairs.append(key)
    return pairs


@torch.no_grad()
def fold_bn_into_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """ Fold an eval-mode BN into the conv that feeds it, in place (the conv gains a bias if it had none).

    The arithmetic is done in float64 and cast back to the conv's dtype.
    """
    w = conv.weight
    var = bn.running_var.double()
    mean = bn.running_mean.double()
    scale = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    shift = -mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias.double()
    bias = shift if conv.bias is None else conv.bias.double() * scale + shift
    conv.weight.copy_((w.double() * scale.reshape(-1, *([1] * (w.ndim - 1)))).to(w.dtype))
    if conv.bias is None:
        conv.bias = nn.Parameter(bias.to(device=w.device, dtype=w.dtype), requires_grad=w.requires_grad)
    else:
        conv.bias.copy_(bias.to(conv.bias.dtype))


def _bn_remainder(bn: nn.Module) -> nn.Module:
    """ What is left of a BN once its affine part is folded away: BatchNormAct2d's drop + act, else Identity. """
    if isinstance(bn, BatchNormAct2d):
        rest = [m for m in (getattr(bn, 'drop', None), getattr(bn, 'act', None))
                if m is not None and not isinstance(m, nn.Identity)]
        if not rest:
            return nn.Identity()
        return rest[0] if len(rest) == 1 else nn.Sequential(*rest)
    return nn.Identity()


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition('.')
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


def _bn_modules(model: nn.Module) -> Iterator[nn.Module]:
    return (m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))


def count_bn(model: nn.Module) -> int:
    """ Number of BatchNorm modules (any ``_BatchNorm`` subclass, BatchNormAct2d included) in ``model``. """
    return sum(1 for _ in _bn_modules(model))


def fuse_bn(model: nn.Module, inplace: bool = False) -> nn.Module:
    """ Fold every BatchNorm that directly follows a conv into that conv, for inference.

    Args:
        model: A model in eval mode (``model.eval()``); every BN in it must be in eval mode too.
        inplace: Modify ``model`` itself. The default (False) works on a deep copy and leaves ``model`` untouched.

    Returns:
        The fused model (``model`` itself if ``inplace``, else the copy), still in eval mode. Its output equals the
        unfused eval output up to float rounding. It is meant for inference only: the folded BNs are gone, so
        training it would train a different (BN-free at those places) network.

    Raises:
        RuntimeError: If the model or any BN in it is in training mode (BN uses batch statistics there, which a
            constant fold cannot represent).
    """
    if model.training or any(m.training for m in _bn_modules(model)):
        raise RuntimeError(
            'fuse_bn() folds BatchNorm running statistics and is only valid in eval mode: call model.eval() first'
        )
    if not inplace:
        model = copy.deepcopy(model)
    for conv_name, bn_name in find_conv_bn_pairs(model):
        conv = model.get_submodule(conv_name)
        bn = model.get_submodule(bn_name)
        fold_bn_into_conv(conv, bn)
        rest = _bn_remainder(bn)
        rest.eval()
        _set_submodule(model, bn_name, rest)
    return model
