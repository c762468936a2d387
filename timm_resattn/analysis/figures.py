""" Figures of the soft masks of a Residual Attention Network over the images it looks at (drawn with Pillow).

Used by the ``visualize`` command (``timm_resattn.cli.visualize``). Each image is preprocessed with the model's
own eval transform (``timm.data.resolve_data_config`` + ``create_transform``) and becomes one row of the PNG: the
preprocessed crop, then for every Attention Module the soft mask M(x) averaged over channels (and each
``--channels`` channel) upsampled bilinearly to the crop size and overlaid as a heat map. ``response_chart`` draws
the mean absolute response of each stage (paper Fig. 4) as a bar chart.

Copyright the timm-resattn authors, Apache-2.0.
"""
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from .masks import MaskRecord

__all__ = [
    'jet', 'overlay_heatmap', 'mask_grid', 'grid_size', 'response_chart', 'chart_size',
    'tile_scale', 'PAD', 'TITLE_H', 'HEADER_H', 'MIN_TILE', 'CHART_H', 'CHART_MARGIN_X', 'CHART_SLOT_W',
]

# grid layout (pixels): a header band, then per row a two-line title band above each tile
PAD = 4
LINE_H = 12
TITLE_H = 2 * LINE_H + 4
HEADER_H = 3 * LINE_H + 12  # two lines of text, then the colour bar
MIN_TILE = 128  # smaller crops (CIFAR's 32 px) are enlarged by an integer factor so that labels fit
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


def tile_scale(h: int, w: int) -> int:
    """ Integer factor by which an ``h x w`` crop is enlarged in the grid (1 unless it is under ``MIN_TILE``). """
    return max(1, math.ceil(MIN_TILE / max(1, min(h, w))))


def _wrap(draw: ImageDraw.ImageDraw, text: str, width: int, font: ImageFont.ImageFont, lines: int) -> List[str]:
    """ Break ``text`` at spaces into at most ``lines`` lines of ``width`` pixels (the last one cut with '~'). """
    out, words = [], text.split(' ')
    while words and len(out) < lines - 1:
        line = words.pop(0)
        while words and draw.textlength(f'{line} {words[0]}', font=font) <= width:
            line = f'{line} {words.pop(0)}'
        out.append(line)
    if words:
        out.append(_fit(draw, ' '.join(words), width, font))
    return out


def grid_size(num_rows: int, num_modules: int, num_channels: int, tile_hw: Tuple[int, int]) -> Tuple[int, int]:
    """ ``(width, height)`` of the ``mask_grid`` PNG.

    One row per image; columns: the input, then per Attention Module the channel mean and ``num_channels`` chosen
    channels. Every tile is ``tile_hw`` (the crop size, enlarged by ``tile_scale`` when under ``MIN_TILE``) below
    a ``TITLE_H`` title band; ``PAD`` pixels separate the tiles; a ``HEADER_H`` band at the top holds the legend.
    """
    num_cols = 1 + num_modules * (1 + num_channels)
    k = tile_scale(*tile_hw)
    h, w = tile_hw[0] * k, tile_hw[1] * k
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
    k = tile_scale(h, w)
    if k > 1:  # enlarge small crops (nearest: the pixels stay visible as pixels)
        images = F.interpolate(images, scale_factor=k, mode='nearest')
        h, w = h * k, w * k
    canvas = Image.new('RGB', (width, height), _BG)
    draw = ImageDraw.Draw(canvas)
    font = _font()

    # header: text, then a colour bar with its scale
    for i, line in enumerate(_wrap(draw, header, width - 2 * PAD, font, lines=2)):
        draw.text((PAD, PAD + i * LINE_H), line, fill=_FG, font=font)
    bar_y = PAD + 2 * LINE_H + 4
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

        def put(tile: torch.Tensor, line1: str, line2: str, top: int = top) -> None:
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
