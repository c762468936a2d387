""" Export a model for deployment: an ONNX file with a dynamic batch, height and width.

    timm-resattn export onnx --model resattnet56 [--checkpoint W.safetensors] [--max-size 1024] OUT.onnx

Exports through ``torch.export`` and ``torch.onnx.export(dynamo=True)`` (``timm_resattn.export.export_onnx``), then,
when onnxruntime is installed, runs the file at a few sizes and prints its relative error against the eager model.
Needs the ``export`` extra (``pip install "timm-resattn[export]"``).
"""
import argparse

from ..errors import CommandError, ConfigError
from .common import MAX_IMAGE_SIZE, number_type, add_model_arguments, image_size_int, model_from_args, output_argument

__all__ = ['configure', 'run']


def _onnx(args: argparse.Namespace) -> int:
    from ..export.onnx import export_onnx, require_onnx, verify_onnx
    from ..export.program import resolve_size_range

    require_onnx()
    if args.min_size is not None and args.max_size < args.min_size:  # before the model is built
        raise CommandError(f'--max-size {args.max_size} is below --min-size {args.min_size}')
    model = model_from_args(args).eval()
    try:
        min_size, max_size = resolve_size_range(model, args.min_size, args.max_size)
    except ConfigError as e:  # the model's own minimum above --max-size
        raise CommandError(f'--min-size/--max-size: {e}') from None
    path = export_onnx(model, args.output, min_size=min_size, max_size=max_size, opset=args.opset)
    print(f'wrote {path} ({path.stat().st_size / 2 ** 20:.1f} MiB): {args.model}, inputs N x 3 x H x W with H, W in '
          f'[{min_size}, {max_size}]')
    try:
        require_onnx(runtime=True)
    except ImportError:
        print('onnxruntime is not installed: the file was not run (pip install onnxruntime to check it)')
        return 0
    default = model.pretrained_cfg.get('input_size', (3, 224, 224))[-1]
    sizes = sorted({(min_size, min_size), (min(default, max_size), min(default, max_size)),
                    (min(min_size * 2 + 1, max_size), min(min_size * 3, max_size))})
    errors = verify_onnx(path, model, sizes=sizes, batch_size=1)
    worst = max(errors.values())
    print('onnxruntime vs eager, relative error: ' + ', '.join(f'{h}x{w} {e:.1e}' for (h, w), e in errors.items()))
    if not worst < 1e-4:
        raise CommandError(f'{path}: onnxruntime disagrees with the eager model (relative error {worst:.2e})')
    return 0


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest='format', metavar='FORMAT')
    sub.required = True
    onnx = sub.add_parser('onnx', help='an ONNX file (dynamic batch, height and width)', description=__doc__.strip()
                          .splitlines()[0])
    output_argument(onnx, 'output', metavar='OUT.onnx', label='OUT.onnx', force_flag='force',
                    help='the ONNX file to write (its folder must exist)')
    add_model_arguments(onnx)
    onnx.add_argument('--min-size', type=image_size_int, default=None,
                      help="smallest input height/width (default: the model's minimum)")
    onnx.add_argument('--max-size', type=image_size_int, default=1024,
                      help=f'largest input height/width (default 1024, at most {MAX_IMAGE_SIZE})')
    onnx.add_argument('--opset', type=number_type(int, 17, 23, what='an ONNX opset in [17, 23]'), default=18,
                      help='ONNX opset (17..23, default 18)')
    onnx.add_argument('--force', action='store_true', help='overwrite OUT.onnx if it exists (never an input file)')
    onnx.set_defaults(_export=_onnx)


def run(args: argparse.Namespace) -> int:
    return args._export(args)
