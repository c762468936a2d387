""" One registered model in numbers: params, MACs at its input size, input sizes, weight tags. """
from typing import Any, Dict

import timm

from .flops import count_macs

__all__ = ['model_summary']


def model_summary(name: str) -> Dict[str, Any]:
    """ Params, MACs at the default input size, input sizes and weight tags of one registered model.

    The model is built on the meta device: shapes and MAC counts without allocating or computing anything.
    """
    model = timm.create_model(name, device='meta').eval()
    cfg = model.pretrained_cfg
    input_size = tuple(cfg['input_size'])
    return dict(
        model=name,
        params=sum(p.numel() for p in model.parameters()),
        gmacs=count_macs(model, input_size) / 1e9,
        input_size=input_size,
        test_input_size=tuple(cfg.get('test_input_size') or input_size),
        num_classes=cfg['num_classes'],
        weights=list(timm.list_pretrained(name)),
    )
