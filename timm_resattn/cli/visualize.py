""" Overlay the soft masks M(x) of every Attention Module on images (one row per image, PNG).

    timm-resattn visualize IMAGE [IMAGE ...] --model resattnet56 --checkpoint W.safetensors \\
        --out masks.png [--channels 0,5,17] [--responses responses.png]
"""
import argparse
import os
import sys
from typing import List

import torch

from ..analysis.figures import mask_grid, response_chart
from ..analysis.masks import MaskRecorder, ResponseRecorder, find_attention_modules
from ..errors import CommandError
from .common import (
    add_model_arguments, check_model_input, device_argument, image_size_int, input_argument, model_from_args,
    open_image, output_argument, unit_interval,
)

__all__ = ['configure', 'run']


def _parse_channels(text: str) -> List[int]:
    try:
        channels = [int(c) for c in text.split(',') if c.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected channel indices like 0,5,17, got {text!r}') from None
    if any(c < 0 for c in channels):
        raise argparse.ArgumentTypeError(f'channel indices must be >= 0, got {text!r}')
    return channels


def configure(parser: argparse.ArgumentParser) -> None:
    input_argument(parser, 'images', nargs='+', metavar='IMAGE', label='IMAGE',
                   help='image files (anything Pillow reads)')
    add_model_arguments(parser)
    output_argument(parser, '--out', required=True, metavar='OUT.png', force_flag='force',
                    help='where to write the mask grid')
    parser.add_argument('--channels', type=_parse_channels, default=[], metavar='C[,C...]',
                        help='also show these mask channels (e.g. 0,5,17) besides the channel mean')
    output_argument(parser, '--responses', metavar='OUT2.png', force_flag='force',
                    help='also write a bar chart of the mean absolute response per stage (paper Fig. 4)')
    parser.add_argument('--img-size', type=image_size_int, default=None, metavar='N',
                        help="input size N x N (default: the model's pretrained config)")
    parser.add_argument('--scale', choices=('tile', 'fixed'), default='tile',
                        help="heat map range: each tile's min..max (default) or fixed [0, 1]")
    parser.add_argument('--alpha', type=unit_interval, default=0.5, help='heat map opacity in [0, 1] (default 0.5)')
    parser.add_argument('--force', action='store_true',
                        help='overwrite --out / --responses if they exist (never an input file)')
    device_argument(parser)


def _save(image, path: str) -> None:
    from ..weights import atomic_write
    try:
        atomic_write(path, lambda tmp: image.save(tmp, format='PNG'))
    except OSError as e:
        raise CommandError(f"can't write {path!r}: {e.strerror or e}") from None


def run(args: argparse.Namespace) -> int:
    model = model_from_args(args)
    check_model_input(model, args.model, input_size=args.img_size, size_flag='--img-size', ranks_classes=False)
    try:
        find_attention_modules(model)
    except ValueError as e:
        raise CommandError(f'--model {args.model}: {e}') from None
    trained = bool(args.pretrained or args.checkpoint)
    if not trained:
        print(
            f'warning: {args.model} has random weights (neither --pretrained nor --checkpoint given): the masks of '
            f'an untrained network are meaningless; this only shows the layout.',
            file=sys.stderr,
        )
    pil_images = [open_image(p) for p in args.images]
    device = args.device  # checked by parse_device
    model = model.to(device).eval()

    from timm.data import create_transform, resolve_data_config
    config_args = {'input_size': (3, args.img_size, args.img_size)} if args.img_size else {}
    config = resolve_data_config(config_args, model=model)
    transform = create_transform(**config)
    batch = torch.stack([transform(im) for im in pil_images])

    with MaskRecorder(model, to_cpu=True, store_trunk=False) as masks, ResponseRecorder(model) as responses, \
            torch.no_grad():
        model(batch.to(device))
    records = masks.records
    for r in records:
        m = r.mask
        print(f'{r.name:<16} stage {r.stage}  mask {tuple(m.shape[1:])}  '
              f'mean {m.mean().item():.4f}  min {m.min().item():.4f}  max {m.max().item():.4f}')

    mean = torch.tensor(config['mean']).view(1, 3, 1, 1)
    std = torch.tensor(config['std']).view(1, 3, 1, 1)
    shown = (batch * std + mean).clamp(0, 1)
    weights = 'pretrained' if args.pretrained else (os.path.basename(args.checkpoint) if args.checkpoint else
                                                    'UNTRAINED: random weights, masks meaningless')
    channel_text = 'channel mean' + (f' + channels {",".join(map(str, args.channels))}' if args.channels else '')
    scale_text = "each tile's min..max" if args.scale == 'tile' else 'fixed [0, 1]'
    header = f'{args.model} ({weights}) | soft mask M(x), {channel_text} | heat: {scale_text}'
    try:
        grid = mask_grid(
            shown, records, [os.path.basename(p) for p in args.images], channels=args.channels,
            alpha=args.alpha, scale=args.scale, header=header,
        )
    except ValueError as e:
        raise CommandError(f'--channels: {e}') from None
    _save(grid, args.out)
    num_cols = 1 + len(records) * (1 + len(args.channels))
    print(f'wrote {args.out} ({grid.width}x{grid.height} px: {len(pil_images)} row(s) x {num_cols} tiles)')

    if args.responses:
        values = responses.result()
        for name, value in values.items():
            print(f'{name:<16} mean |response| {value:.6g}')
        title = f'{args.model} ({"trained" if trained else "untrained"}): mean |response| per stage'
        chart = response_chart(values, title=title)
        _save(chart, args.responses)
        print(f'wrote {args.responses} ({chart.width}x{chart.height} px)')
    return 0
