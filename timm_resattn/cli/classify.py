""" Classify an image: the top-k classes of one model, with the model's own preprocessing. """
import argparse
import sys
from typing import List, Optional

import torch

from .common import (
    add_model_arguments, check_model_input, create_model, input_argument, open_image, parse_model_kwargs, positive_int,
)

__all__ = ['classify', 'configure', 'run', 'CIFAR10_CLASSES']

CIFAR10_CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck')


def _label_names(num_classes: int) -> Optional[List[str]]:
    if num_classes == 1000:
        from timm.data import ImageNetInfo
        info = ImageNetInfo()
        return [info.index_to_description(i) for i in range(1000)]
    if num_classes == 10:
        return list(CIFAR10_CLASSES)
    return None


def classify(image: str, model_name: str, pretrained: bool = False, checkpoint: Optional[str] = None,
             topk: int = 5, model_kwargs: Optional[dict] = None) -> int:
    """ Print the top-``topk`` classes of ``image``; user errors raise ``ResAttnError``s. """
    from timm.data import create_transform, resolve_data_config

    model = create_model(model_name, pretrained, checkpoint, model_kwargs).eval()
    check_model_input(model, model_name)
    img = open_image(image)  # errors name it IMAGE (the positional argument)
    if not pretrained and not checkpoint:
        print('warning: no --pretrained or --checkpoint given: this is a randomly initialised network, '
              'its predictions mean nothing.', file=sys.stderr)
    config = resolve_data_config({}, model=model)
    x = create_transform(**config)(img).unsqueeze(0)
    with torch.no_grad():
        probs = model(x).softmax(dim=-1)[0]
    values, indices = probs.topk(min(topk, probs.numel()))
    names = _label_names(probs.numel())
    print(f'{model_name} on {image} (input {tuple(x.shape[-2:])}, crop_pct {config["crop_pct"]}, '
          f'{config["interpolation"]}):')
    for rank, (p, i) in enumerate(zip(values.tolist(), indices.tolist()), start=1):
        label = names[i] if names else f'class {i}'
        print(f'{rank}. {p * 100:6.2f}%  {i:>4d}  {label}')
    return 0


def configure(parser: argparse.ArgumentParser) -> None:
    input_argument(parser, 'image', metavar='IMAGE', help='the image file to classify')
    add_model_arguments(parser, default='resattnet56')
    parser.add_argument('--topk', type=positive_int, default=5, help='how many classes to print (default 5)')


def run(args: argparse.Namespace) -> int:
    return classify(args.image, args.model, args.pretrained, args.checkpoint, args.topk,
                    parse_model_kwargs(args.model_kwargs))
