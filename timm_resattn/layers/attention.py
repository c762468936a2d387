""" Attention Module of the Residual Attention Network (Wang et al., CVPR 2017, arXiv:1704.06904)

An Attention Module has a trunk branch T(x) and a soft-mask branch M(x) (paper Fig. 2)::

    x = pre(x)                 # p residual units
    T = trunk(x)               # t residual units
    M = mask(x, T)             # bottom-up top-down hourglass, output in T's shape
    H = (1 + M) * T            # attention residual learning (Eq. 3), or M * T (naive attention learning)
    out = post(H)              # p residual units

The mask branch (paper Fig. 3, official Caffe files ``mask/down_sample``, ``mask/skip``, ``mask/up_sample``):
``L`` max-pool levels (3x3/s2 Caffe ceil mode), ``r`` units after each pool and ``2r`` at the lowest
resolution, one skip unit per level above the lowest, bilinear upsampling (``align_corners=True``) to the *exact*
size of the tensor it is merged with, ``r`` units after each merge, a last upsampling to T's size, then the
mask head ``[BN-ReLU] -> conv1x1 -> BN-ReLU -> conv1x1 -> activation``.

``PytorchcvEncoderDecoderMask`` is the mask branch of the community ``pytorchcv`` ResAttNet instead (the network the
only public ImageNet checkpoint was trained with): same units and parameter shapes, but each skip unit adds its own
input (``s + unit(s)``), the trunk output T is added before the mask head (``head(up + T)``), and the max-pools are
3x3/s2 with padding 1 in floor mode. pytorchcv upsamples by a fixed factor 2, which equals the exact-size bilinear
resize used here (``align_corners=True``) wherever pytorchcv runs at all, i.e. where every map has an even size.

Copyright the timm-resattn authors, Apache-2.0.
"""
from typing import Callable, List, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from timm.layers import BatchNormAct2d, LayerType, register_notrace_module

from ..errors import check_choice

__all__ = [
    'MaskActivation', 'MaskHead', 'EncoderDecoderMask', 'PytorchcvEncoderDecoderMask', 'LocalConvMask',
    'AttentionModule', 'interpolate_like', 'create_max_pool', 'max_pool_padded', 'MASK_ACTS', 'MASK_TYPES',
    'MASK_WIRINGS', 'MAX_POOLS',
]

MASK_ACTS = ('mixed', 'channel', 'spatial')
MASK_TYPES = ('encoder_decoder', 'local')
MASK_WIRINGS = ('official', 'pytorchcv')
MAX_POOLS = ('caffe', 'torch')


def max_pool_padded(
        x: torch.Tensor,
        kernel_size: Union[int, Tuple[int, int]] = 3,
        stride: Union[int, Tuple[int, int]] = 2,
        padding: Union[int, Tuple[int, int]] = 0,
        ceil_mode: bool = False,
) -> torch.Tensor:
    """ The 3x3/s2 max-pools of ``create_max_pool`` written without ceil mode, for tracing with symbolic sizes.

    Caffe's pooling (3x3, stride 2, no padding, ceil mode) equals floor-mode pooling of the input padded with one
    ``-inf`` column on the right and one ``-inf`` row at the bottom: both give ``(size - 2) // 2 + 1`` outputs, every
    ceil-mode window overhangs the input by at most that one pixel (its start ``2i <= size - 2`` lies inside), and
    a ``-inf`` never wins a max over a window that holds at least one real value. So the result is bit-identical,
    NaNs included. Written this way torch.export needs no ceil-mode size rule (``out - 1`` windows must start inside
    the input), whose symbolic form (``-2 + 2 * ((h / 8) // 2) < h / 8``) its shape solver can't decide for a
    dynamic height/width. The floor-mode pools (``padding=1``, pytorchcv's) need no rewrite and go straight through.
    """
    if not ceil_mode:
        return F.max_pool2d(x, kernel_size, stride, padding)
    if padding not in (0, (0, 0)) or kernel_size not in (3, (3, 3)) or stride not in (2, (2, 2)):
        raise ValueError(
            f'max_pool_padded rewrites only the 3x3/s2 unpadded ceil-mode pool, got kernel_size={kernel_size}, '
            f'stride={stride}, padding={padding}'
        )
    return F.max_pool2d(F.pad(x, (0, 1, 0, 1), value=float('-inf')), kernel_size, stride)


@register_notrace_module
class MaxPool2dCpuFast(nn.MaxPool2d):
    """ ``nn.MaxPool2d`` that pools NCHW CPU tensors in channels_last layout (and hands back NCHW).

    PyTorch's NCHW CPU kernel for these 3x3/s2 pools is 3-5x slower than its channels_last kernel (e.g. 33 vs 10 ms
    for 8x256x56x56 including both layout copies, 2 threads): on CPU the mask branches' pools were the largest
    non-conv cost of the network (see ``docs/benchmarks.md``). Max-pooling is exact, so the output is
    bit-identical; only the index chosen among tied maxima (i.e. where the gradient goes) may differ. Other devices
    and layouts take the plain path. A leaf for FX tracing (the layout test is Python control flow).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting() and torch.compiler.is_compiling():
            # torch.compile / torch.export: one formulation without shape-dependent branches (see max_pool_padded)
            return max_pool_padded(x, self.kernel_size, self.stride, self.padding, self.ceil_mode)
        if x.device.type == 'cpu' and x.dim() == 4 and x.shape[1] > 1 and x.is_contiguous():
            x = F.max_pool2d(
                x.contiguous(memory_format=torch.channels_last),
                self.kernel_size,
                self.stride,
                self.padding,
                self.dilation,
                ceil_mode=self.ceil_mode,
            )
            return x.contiguous()
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation, ceil_mode=self.ceil_mode)


def create_max_pool(mode: str = 'caffe') -> nn.MaxPool2d:
    """ The 3x3/s2 max-pool of the stem and of the mask branches.

    * ``'caffe'``: no padding, ceil mode: Caffe's pooling, as in the official files (56 -> 28, 57 -> 28).
    * ``'torch'``: padding 1, floor mode: the usual PyTorch port (pytorchcv): 56 -> 28, 57 -> 29, and the windows
      sit one pixel further left/up than Caffe's.
    """
    if mode == 'caffe':
        return MaxPool2dCpuFast(kernel_size=3, stride=2, ceil_mode=True)
    check_choice('max_pool', mode, MAX_POOLS)
    return MaxPool2dCpuFast(kernel_size=3, stride=2, padding=1)


def interpolate_like(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """ Bilinear resize of ``x`` to ``ref``'s spatial size, ``align_corners=True``.

    This is Caffe's two-bottom ``Interp`` layer as the authors' fork implements it
    (``ratio = (in - 1) / (out - 1)``; equal sizes copy). Resizing to the reference size, never by a fixed factor,
    keeps odd input sizes working.
    """
    return F.interpolate(x, size=ref.shape[-2:], mode='bilinear', align_corners=True)


class MaskActivation(nn.Module):
    """ The soft-mask activation f of paper §3.3.

    * ``'mixed'`` (Eq. 4): sigmoid per element. The official nets use this.
    * ``'channel'`` (Eq. 5): L2 normalisation across channels at each spatial position.
    * ``'spatial'`` (Eq. 6): per-channel standardisation over space, then sigmoid.
    """

    def __init__(self, mode: str = 'mixed', eps: float = 1e-5):
        super().__init__()
        check_choice('mask_act', mode, MASK_ACTS)
        self.mode = mode
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == 'channel':
            return x / x.norm(p=2, dim=1, keepdim=True).clamp_min(self.eps)
        if self.mode == 'spatial':
            mean = x.mean(dim=(2, 3), keepdim=True)
            std = x.std(dim=(2, 3), keepdim=True, unbiased=False)
            return torch.sigmoid((x - mean) / (std + self.eps))
        return torch.sigmoid(x)

    def extra_repr(self) -> str:
        return f'mode={self.mode}'


class MaskHead(nn.Module):
    """ The mask head: ``[BN-ReLU] -> conv1x1 -> BN-ReLU -> conv1x1 -> activation``.

    Caffe names ``up_sample/interp_1/bn`` (pre-activation nets only; in the NeXt nets the input is already
    post-ReLU), ``mask/linear_1``, ``mask/linear_1/bn``, ``mask/linear_2``, ``mask``. Both convs keep the channel
    count and have no bias; no BN between the second conv and the activation.
    """

    def __init__(
            self,
            chs: int,
            preact: bool = True,
            mask_act: str = 'mixed',
            act_layer: LayerType = nn.ReLU,
            norm_layer: Callable[..., nn.Module] = BatchNormAct2d,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.norm1 = norm_layer(chs, act_layer=act_layer, **dd) if preact else nn.Identity()
        self.conv1 = nn.Conv2d(chs, chs, 1, bias=False, **dd)
        self.norm2 = norm_layer(chs, act_layer=act_layer, **dd)
        self.conv2 = nn.Conv2d(chs, chs, 1, bias=False, **dd)
        self.act = MaskActivation(mask_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(self.norm1(x))
        x = self.conv2(self.norm2(x))
        return self.act(x)


class MaskUpLevel(nn.Module):
    """ One merge of the mask decoder: ``up(interpolate(x -> skip input) + skip(skip input))``. """

    def __init__(self, skip: nn.Module, up: nn.Module):
        super().__init__()
        self.skip = skip
        self.up = up

    def forward(self, x: torch.Tensor, skip_in: torch.Tensor) -> torch.Tensor:
        return self.up(interpolate_like(x, skip_in) + self.skip(skip_in))


class PytorchcvMaskUpLevel(MaskUpLevel):
    """ pytorchcv's merge (its ``DoubleSkipBlock``): the skip adds its own input,
    ``up(interpolate(x -> skip input) + (skip_in + skip(skip_in)))``.
    """

    def forward(self, x: torch.Tensor, skip_in: torch.Tensor) -> torch.Tensor:
        return self.up(interpolate_like(x, skip_in) + (skip_in + self.skip(skip_in)))


class EncoderDecoderMask(nn.Module):
    """ Bottom-up top-down (hourglass) soft-mask branch.

    ``down[i]`` runs after the i-th max-pool (``r`` units, ``2r`` for the lowest level); ``up[i]`` is the i-th merge
    on the way back up, deepest first (its skip unit reads the output of ``down[L-2-i]``). Returns M(x) at the
    trunk's size through ``head`` (a ``MaskHead``). ``make_unit`` builds each residual unit; ``max_pool`` picks the
    pooling (``create_max_pool``; ``'caffe'`` officially).
    """
    up_level_cls = MaskUpLevel

    def __init__(
            self,
            levels: int,
            make_unit: Callable[[], nn.Module],
            head: nn.Module,
            r: int = 1,
            max_pool: str = 'caffe',
    ):
        super().__init__()
        if levels < 1:
            raise ValueError(f'the encoder-decoder mask needs at least one down-sampling level, got levels={levels}')
        if r < 1:
            raise ValueError(f'r (units between adjacent pooling layers) must be >= 1, got r={r}')
        self.levels = levels
        # officially Caffe's max-pool: 3x3, stride 2, pad 0, ceil mode (padding=1 shifts the windows by one pixel)
        self.pool = create_max_pool(max_pool)
        self.down = nn.ModuleList([
            nn.Sequential(*[make_unit() for _ in range(2 * r if i == levels - 1 else r)]) for i in range(levels)
        ])
        self.up = nn.ModuleList([
            self.up_level_cls(make_unit(), nn.Sequential(*[make_unit() for _ in range(r)]))
            for _ in range(levels - 1)
        ])
        self.head = head

    def hourglass(self, x: torch.Tensor) -> torch.Tensor:
        """ The bottom-up top-down path, up to (not including) the last upsampling to the trunk's size. """
        feats: List[torch.Tensor] = []
        for down in self.down:
            x = down(self.pool(x))
            feats.append(x)
        num_skips = len(feats) - 1
        for i, up in enumerate(self.up):
            x = up(x, feats[num_skips - 1 - i])
        return x

    def forward(self, x: torch.Tensor, trunk: torch.Tensor) -> torch.Tensor:
        return self.head(interpolate_like(self.hourglass(x), trunk))


class PytorchcvEncoderDecoderMask(EncoderDecoderMask):
    """ The soft-mask branch of pytorchcv's ResAttNet (``pytorchcv.models.resattnet.AttBlock``'s hourglass), in the
    official module layout so that both load the same parameter shapes.

    Differences from ``EncoderDecoderMask`` (the official Caffe wiring)::

        pool  = 3x3/s2 max-pool, padding 1, floor mode        (official: no padding, ceil mode)
        merge = interpolate(x) + (s + skip(s))                (official: interpolate(x) + skip(s))
        M     = head(interpolate(x -> T) + T)                 (official: head(interpolate(x -> T)))

    pytorchcv's lowest level runs ``r`` units after the pool (its ``down``) and ``r`` more before the first
    upsampling (its deepest ``up``): our ``down[-1]``'s ``2r`` units. pytorchcv upsamples by a fixed factor 2
    (bilinear, ``align_corners=True``), equal to the exact-size resize here wherever its sizes work out (all even);
    elsewhere pytorchcv fails and this resizes to the merged tensor's size.
    """
    up_level_cls = PytorchcvMaskUpLevel

    def __init__(self, *args, max_pool: str = 'torch', **kwargs):
        super().__init__(*args, max_pool=max_pool, **kwargs)

    def forward(self, x: torch.Tensor, trunk: torch.Tensor) -> torch.Tensor:
        return self.head(interpolate_like(self.hourglass(x), trunk) + trunk)


class LocalConvMask(nn.Module):
    """ The "local convolutions" soft mask of paper Table 4: residual units at full resolution, no down- or
    up-sampling, followed by the same head (a ``MaskHead``) as the encoder-decoder mask.
    """

    def __init__(self, num_units: int, make_unit: Callable[[], nn.Module], head: nn.Module):
        super().__init__()
        if num_units < 1:
            raise ValueError(f'the local-convolution mask needs at least one unit, got {num_units}')
        self.units = nn.Sequential(*[make_unit() for _ in range(num_units)])
        self.head = head

    def forward(self, x: torch.Tensor, trunk: torch.Tensor) -> torch.Tensor:
        return self.head(self.units(x))


class AttentionModule(nn.Module):
    """ Attention Module (paper §3, Fig. 2): ``post((1 + M(x)) * T(x))`` with ``x = pre(input)``.

    Args:
        pre: The p pre-processing units (Caffe ``trunk/res1`` for p=1).
        trunk: The t trunk units (Caffe ``trunk/res2``, ``trunk/res3``).
        mask: The soft-mask branch, called as ``mask(x, T)``.
        post: The p post-processing units (the Caffe unit named after the module itself, e.g. ``AttentionA_1``).
        attention_residual: ``(1 + M) * T`` (attention residual learning, Eq. 3) if True, else ``M * T``
            (naive attention learning).
    """

    def __init__(
            self,
            pre: nn.Module,
            trunk: nn.Module,
            mask: nn.Module,
            post: nn.Module,
            attention_residual: bool = True,
    ):
        super().__init__()
        self.pre = pre
        self.trunk = trunk
        self.mask = mask
        self.post = post
        self.attention_residual = attention_residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pre(x)
        t = self.trunk(x)
        m = self.mask(x, t)
        if self.attention_residual:
            # t + t * m in one kernel; the same order of operations as Caffe's PROD then SUM.
            x = torch.addcmul(t, t, m)
        else:
            x = t * m
        return self.post(x)
