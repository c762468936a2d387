""" Draw the soft masks of a Residual Attention Network over the images it looks at.

    python -m timm_resattn.visualize IMAGE [IMAGE ...] --model resattnet56 --checkpoint W.safetensors \\
        --out masks.png [--channels 0,5,17] [--responses responses.png]

Each image is preprocessed with the model's own eval transform (``timm.data.resolve_data_config`` +
``create_transform``) and becomes one row of the PNG: the preprocessed crop, then for every Attention Module the
soft mask M(x) averaged over channels (and each ``--channels`` channel) upsampled bilinearly to the crop size and
overlaid as a heat map. ``--responses`` also draws the mean absolute response of each stage (paper Fig. 4) as a
bar chart. Everything is drawn with Pillow.

Hacked together by the timm-resattn authors, Apache-2.0.
"""
import argparse
import ast
import math
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont, UnidentifiedImageError

import timm
from timm.data import create_transform, resolve_data_config
from timm.models import load_checkpoint

from .masks import MaskRecord, MaskRecorder, ResponseRecorder, find_attention_modules

__all__ = [
    'main', 'jet', 'overlay_heatmap', 'mask_grid', 'grid_size', 'response_chart', 'chart_size',
    'PAD', 'TITLE_H', 'HEADER_H', 'CHART_H', 'CHART_MARGIN_X', 'CHART_SLOT_W',
]

# grid layout (pixels): a header band, then per row a two-line title band above each tile
PAD = 4
LINE_H = 12
TITLE_H = 2 * LINE_H + 4
HEADER_H = 2 * LINE_H + 12
COLORBAR_W = 128

# bar chart layout (pixels)
CHART_H = 300
CHART_MARGIN_X = 64
CHART_SLOT_W = 96

_BG = (255, 255, 255)
_FG = (0, 0, 0)
_GRID = (210, 210, 210)
_BAR = (214, 96, 77)


def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default()


def jet(values: torch.Tensor) -> torch.Tensor:
    """ The 'jet' colormap (blue -> cyan -> yellow -> red) as a piecewise-linear function.

    Args:
        values: Any shape, in ``[0, 1]`` (clamped).

    Returns:
        RGB in ``[0, 1]``, shape ``values.shape + (3,)``.
    """
    v = values.clamp(0, 1).unsqueeze(-1) * 4
    centers = torch.tensor([3., 2., 1.], dtype=v.dtype, device=v.device)  # peaks of r, g, b
    return (1.5 - (v - centers).abs()).clamp(0, 1)


def overlay_heatmap(
        image: torch.Tensor,
        heat: torch.Tensor,
        alpha: float = 0.5,
        scale: str = 'tile',
) -> Tuple[torch.Tensor, float, float]:
    """ Upsample a 2D map to the image size (bilinear) and blend its jet colours over the image.

    Args:
        image: RGB image ``(3, H, W)`` in ``[0, 1]``.
        heat: Map ``(h, w)`` at feature resolution.
        alpha: Weight of the heat map colours.
        scale: ``'tile'``: stretch the map's own min..max over the colormap; ``'fixed'``: map ``[0, 1]``.

    Returns:
        ``(blended (3, H, W) in [0, 1], min of heat, max of heat)``.
    """
    heat = heat.float()
    lo, hi = heat.min().item(), heat.max().item()
    up = F.interpolate(heat[None, None], size=image.shape[-2:], mode='bilinear', align_corners=False)[0, 0]
    if scale == 'tile':
        up = (up - lo) / (hi - lo) if hi - lo > 1e-12 else torch.full_like(up, 0.5)
    colours = jet(up).permute(2, 0, 1)
    return (1 - alpha) * image.float() + alpha * colours, lo, hi


def _fit(draw: ImageDraw.ImageDraw, text: str, width: int, font: ImageFont.ImageFont) -> str:
    """ Cut ``text`` (with a trailing '~') until it fits ``width`` pixels. """
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + '~', font=font) > width:
        text = text[:-1]
    return text + '~'


def _to_pil(image: torch.Tensor) -> Image.Image:
    data = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous()
    return Image.frombytes('RGB', (data.shape[1], data.shape[0]), data.numpy().tobytes())


def grid_size(num_rows: int, num_modules: int, num_channels: int, tile_hw: Tuple[int, int]) -> Tuple[int, int]:
    """ ``(width, height)`` of the ``mask_grid`` PNG.

    One row per image; columns: the input, then per Attention Module the channel mean and ``num_channels`` chosen
    channels. Every tile is ``tile_hw`` (the crop size) below a ``TITLE_H`` title band; ``PAD`` pixels separate
    the tiles; a ``HEADER_H`` band at the top holds the legend.
    """
    num_cols = 1 + num_modules * (1 + num_channels)
    h, w = tile_hw
    return PAD + num_cols * (w + PAD), HEADER_H + num_rows * (TITLE_H + h + PAD)


def mask_grid(
        images: torch.Tensor,
        records: Sequence[MaskRecord],
        image_titles: Optional[Sequence[str]] = None,
        channels: Sequence[int] = (),
        alpha: float = 0.5,
        scale: str = 'tile',
        header: str = '',
) -> Image.Image:
    """ Draw the masks of one forward pass over the (de-normalised) input images.

    Args:
        images: The input batch ``(B, 3, H, W)`` in ``[0, 1]`` (de-normalised).
        records: One ``MaskRecord`` per Attention Module for this batch (``MaskRecorder.records``).
        image_titles: A title per image (default ``image 0``, ...).
        channels: Mask channels to show besides the channel mean.
        alpha: Weight of the heat map colours.
        scale: ``'tile'`` (each tile's own min..max) or ``'fixed'`` (``[0, 1]``).
        header: Text of the header band (the colour bar is drawn below it).

    Returns:
        An RGB image of ``grid_size(B, len(records), len(channels), (H, W))``.
    """
    if scale not in ('tile', 'fixed'):
        raise ValueError(f"scale must be 'tile' or 'fixed', got {scale!r}")
    images = images.detach().float().cpu()
    num_images, _, h, w = images.shape
    for r in records:
        if r.mask.shape[0] != num_images:
            raise ValueError(f'{r.name}: mask batch {r.mask.shape[0]} != {num_images} images (one forward only)')
        for c in channels:
            if not 0 <= c < r.mask.shape[1]:
                raise ValueError(f'channel {c} is out of range for {r.name}, which has {r.mask.shape[1]} channels')
    image_titles = list(image_titles) if image_titles is not None else [f'image {i}' for i in range(num_images)]
    width, height = grid_size(num_images, len(records), len(channels), (h, w))
    canvas = Image.new('RGB', (width, height), _BG)
    draw = ImageDraw.Draw(canvas)
    font = _font()

    # header: text, then a colour bar with its scale
    draw.text((PAD, PAD), _fit(draw, header, width - 2 * PAD, font), fill=_FG, font=font)
    bar_y = PAD + LINE_H + 4
    low, high = ('min', 'max') if scale == 'tile' else ('0', '1')
    x = PAD
    draw.text((x, bar_y - 1), low, fill=_FG, font=font)
    x += int(draw.textlength(low, font=font)) + 4
    bar = _to_pil(jet(torch.linspace(0, 1, COLORBAR_W)).t().unsqueeze(1).expand(3, LINE_H - 2, COLORBAR_W))
    canvas.paste(bar, (x, bar_y))
    x += COLORBAR_W + 4
    draw.text((x, bar_y - 1), high, fill=_FG, font=font)

    for row in range(num_images):
        top = HEADER_H + row * (TITLE_H + h + PAD)
        col = 0

        def put(tile: torch.Tensor, line1: str, line2: str) -> None:
            nonlocal col
            left = PAD + col * (w + PAD)
            draw.text((left, top), _fit(draw, line1, w, font), fill=_FG, font=font)
            draw.text((left, top + LINE_H + 1), _fit(draw, line2, w, font), fill=_FG, font=font)
            canvas.paste(_to_pil(tile), (left, top + TITLE_H))
            col += 1

        image = images[row]
        put(image, image_titles[row], f'input {h}x{w}')
        for r in records:
            mask = r.mask[row].float().cpu()
            size = f'{mask.shape[-2]}x{mask.shape[-1]}'
            maps = [('mean', mask.mean(dim=0))] + [(f'c{c}', mask[c]) for c in channels]
            for label, heat in maps:
                tile, lo, hi = overlay_heatmap(image, heat, alpha=alpha, scale=scale)
                put(tile, f'{r.name} {size}', f'{label} {lo:.2f}..{hi:.2f}')
    return canvas


def _nice_ceil(value: float) -> float:
    """ The smallest 1/2/2.5/5 x 10^k >= value (axis maximum). """
    if value <= 0:
        return 1.0
    exp = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if step * exp >= value:
            return step * exp
    return 10 * exp


def chart_size(num_bars: int) -> Tuple[int, int]:
    """ ``(width, height)`` of the ``response_chart`` PNG. """
    return 2 * CHART_MARGIN_X + num_bars * CHART_SLOT_W, CHART_H


def response_chart(responses: Dict[str, float], title: str = 'mean absolute response per stage') -> Image.Image:
    """ Bar chart of ``mean_abs_response`` values (paper Fig. 4), one bar per stage, drawn with Pillow. """
    if not responses:
        raise ValueError('no responses to draw')
    width, height = chart_size(len(responses))
    canvas = Image.new('RGB', (width, height), _BG)
    draw = ImageDraw.Draw(canvas)
    font = _font()
    plot_top, plot_bottom = 2 * LINE_H + 16, height - 2 * LINE_H - 8
    plot_left, plot_right = CHART_MARGIN_X, width - CHART_MARGIN_X // 2
    draw.text((PAD, PAD), _fit(draw, title, width - 2 * PAD, font), fill=_FG, font=font)

    y_max = _nice_ceil(max(max(responses.values()), 0.0) * 1.05)
    num_ticks = 5
    for i in range(num_ticks + 1):
        v = y_max * i / num_ticks
        y = plot_bottom - (plot_bottom - plot_top) * i / num_ticks
        draw.line([(plot_left, y), (plot_right, y)], fill=_GRID if i else _FG)
        label = f'{v:.3g}'
        draw.text((plot_left - 6 - draw.textlength(label, font=font), y - LINE_H // 2), label, fill=_FG, font=font)
    draw.line([(plot_left, plot_top), (plot_left, plot_bottom)], fill=_FG)

    bar_w = CHART_SLOT_W * 0.6
    for i, (name, value) in enumerate(responses.items()):
        center = CHART_MARGIN_X + (i + 0.5) * CHART_SLOT_W
        y = plot_bottom - (plot_bottom - plot_top) * max(value, 0.0) / y_max
        draw.rectangle([(center - bar_w / 2, y), (center + bar_w / 2, plot_bottom)], fill=_BAR, outline=_FG)
        label = f'{value:.4g}'
        draw.text((center - draw.textlength(label, font=font) / 2, y - LINE_H - 2), label, fill=_FG, font=font)
        name = _fit(draw, name, CHART_SLOT_W - 4, font)
        draw.text((center - draw.textlength(name, font=font) / 2, plot_bottom + 6), name, fill=_FG, font=font)
    return canvas


class _UserError(Exception):
    """ A problem with the command line or its inputs: message, exit code 2, no traceback. """


def _parse_channels(text: str) -> List[int]:
    try:
        channels = [int(c) for c in text.split(',') if c.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected comma-separated channel indices like 0,5,17, got {text!r}')
    if any(c < 0 for c in channels):
        raise argparse.ArgumentTypeError(f'channel indices must be >= 0, got {text!r}')
    return channels


def _parse_kwarg(text: str) -> Tuple[str, object]:
    key, sep, value = text.partition('=')
    if not sep or not key:
        raise argparse.ArgumentTypeError(f'expected key=value, got {text!r}')
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='python -m timm_resattn.visualize',
        description='Overlay the soft masks M(x) of every Attention Module on images (one row per image).',
    )
    parser.add_argument('images', nargs='+', metavar='IMAGE', help='image files (anything Pillow reads)')
    parser.add_argument('--model', required=True, help='model name, e.g. resattnet56')
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument('--pretrained', action='store_true', help='load the published weights of the model')
    weights.add_argument('--checkpoint', metavar='FILE', help='load weights from a safetensors / torch file')
    parser.add_argument('--model-kwargs', nargs='*', default=[], type=_parse_kwarg, metavar='KEY=VALUE',
                        help='extra timm.create_model kwargs, e.g. attention_residual=False')
    parser.add_argument('--out', required=True, metavar='OUT.png', help='where to write the mask grid')
    parser.add_argument('--channels', type=_parse_channels, default=[], metavar='C[,C...]',
                        help='also show these mask channels (e.g. 0,5,17) besides the channel mean')
    parser.add_argument('--responses', metavar='OUT2.png',
                        help='also write a bar chart of the mean absolute response per stage (paper Fig. 4)')
    parser.add_argument('--img-size', type=int, default=None, metavar='N',
                        help="input size N x N (default: the model's pretrained config)")
    parser.add_argument('--scale', choices=('tile', 'fixed'), default='tile',
                        help="heat map range: each tile's min..max (default) or fixed [0, 1]")
    parser.add_argument('--alpha', type=float, default=0.5, help='heat map opacity (default 0.5)')
    parser.add_argument('--device', default='cpu', help='torch device (default cpu)')
    return parser


def _load_images(paths: Sequence[str]) -> List[Image.Image]:
    images = []
    for path in paths:
        if not os.path.isfile(path):
            raise _UserError(f'image not found: {path}')
        try:
            with Image.open(path) as im:
                im.load()
                images.append(im.convert('RGB'))
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise _UserError(f'cannot read image {path}: {e}')
    return images


def _create_model(args: argparse.Namespace) -> torch.nn.Module:
    if not timm.is_model(args.model):
        known = ', '.join(timm.list_models('resatt*'))
        raise _UserError(f'unknown model {args.model!r}; registered Residual Attention Networks: {known}')
    kwargs = dict(args.model_kwargs)
    try:
        model = timm.create_model(args.model, pretrained=args.pretrained, **kwargs)
    except (TypeError, ValueError) as e:  # unknown or invalid --model-kwargs (architecture validation)
        raise _UserError(f'cannot create {args.model} with {kwargs}: {e}')
    except (RuntimeError, OSError) as e:
        if args.pretrained:  # no published weights (RuntimeError from timm-resattn), download problems
            raise _UserError(f'cannot load pretrained weights for {args.model}: {e}')
        raise
    if args.checkpoint:
        try:
            load_checkpoint(model, args.checkpoint)
        except (RuntimeError, OSError, ValueError, KeyError, EOFError) as e:
            raise _UserError(f'cannot load checkpoint {args.checkpoint} into {args.model}: {e}')
        except Exception as e:  # e.g. pickle errors of a file that is no checkpoint at all
            raise _UserError(f'cannot load checkpoint {args.checkpoint}: {type(e).__name__}: {e}')
    return model


def _run(args: argparse.Namespace) -> None:
    if args.checkpoint and not os.path.isfile(args.checkpoint):
        raise _UserError(f'checkpoint not found: {args.checkpoint}')
    if not 0 <= args.alpha <= 1:
        raise _UserError(f'--alpha must be in [0, 1], got {args.alpha}')
    if args.img_size is not None and args.img_size < 1:
        raise _UserError(f'--img-size must be positive, got {args.img_size}')
    pil_images = _load_images(args.images)
    model = _create_model(args)
    try:
        find_attention_modules(model)
    except ValueError as e:
        raise _UserError(str(e))
    trained = bool(args.pretrained or args.checkpoint)
    if not trained:
        print(
            f'warning: {args.model} has random weights (neither --pretrained nor --checkpoint given): the masks of '
            f'an untrained network are meaningless; this only shows the layout.',
            file=sys.stderr,
        )
    try:
        device = torch.device(args.device)
        model = model.to(device).eval()
    except (RuntimeError, ValueError) as e:
        raise _UserError(f'cannot use device {args.device!r}: {e}')

    config_args = {'input_size': (3, args.img_size, args.img_size)} if args.img_size else {}
    config = resolve_data_config(config_args, model=model)
    transform = create_transform(**config)
    batch = torch.stack([transform(im) for im in pil_images])
    min_size = getattr(model, 'min_input_size', 1)
    if min(batch.shape[-2:]) < min_size:
        raise _UserError(f'{args.model} needs inputs of at least {min_size}x{min_size}, got {tuple(batch.shape[-2:])}')

    with MaskRecorder(model, to_cpu=True, store_trunk=False) as masks, ResponseRecorder(model) as responses:
        with torch.no_grad():
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
        raise _UserError(str(e))
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


def _save(image: Image.Image, path: str) -> None:
    try:
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        image.save(path, format='PNG')
    except (OSError, ValueError) as e:
        raise _UserError(f'cannot write {path}: {e}')


def main(argv: Optional[Sequence[str]] = None) -> int:
    """ Command line entry point; returns the exit code (0 success, 2 for bad arguments or inputs). """
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse errors (2) and --help (0)
        return e.code if isinstance(e.code, int) else 0
    try:
        _run(args)
    except _UserError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
