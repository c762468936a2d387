""" BN-folding rules for timm's ResNet peers, so that ``--fuse-bn`` folds them like ours
(``timm_resattn.analysis.fuse``).

Which BN follows which conv is read from each block's ``forward``: ``resnet.Bottleneck``/``BasicBlock``/``ResNet``
stem, ``resnetv2.PreActBottleneck``/``PreActBasic``/``Bottleneck``/``DownsampleConv``.
"""
from timm_resattn.analysis.fuse import register_fuse_pairs

__all__ = ['register_timm_peers']


def register_timm_peers() -> None:
    """ Declare the conv/BN pairs of timm's ResNet / ResNetV2 blocks (idempotent). """
    try:
        from timm.models import resnet, resnetv2
    except ImportError:  # pragma: no cover - very old timm
        return
    register_fuse_pairs(resnet.Bottleneck, [('conv1', 'bn1'), ('conv2', 'bn2'), ('conv3', 'bn3')])
    register_fuse_pairs(resnet.BasicBlock, [('conv1', 'bn1'), ('conv2', 'bn2')])
    register_fuse_pairs(resnet.ResNet, [('conv1', 'bn1')])  # only taken when conv1 is a plain conv (no deep stem)
    for name, pairs in (
            ('PreActBottleneck', [('conv1', 'norm2'), ('conv2', 'norm3')]),
            ('PreActBasic', [('conv1', 'norm2')]),
            ('Bottleneck', [('conv1', 'norm1'), ('conv2', 'norm2'), ('conv3', 'norm3')]),
            ('DownsampleConv', [('conv', 'norm')]),
    ):
        cls = getattr(resnetv2, name, None)
        if cls is not None:
            register_fuse_pairs(cls, pairs)
