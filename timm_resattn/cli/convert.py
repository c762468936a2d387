""" Convert other weights to timm-resattn safetensors: the authors' Caffe weights of the official nets.

    timm-resattn convert caffe IN.caffemodel OUT.safetensors --model resattnet92 [--force]

Writes a safetensors state_dict (with the architecture in its metadata) that loads with
``timm.create_model('resattnet92', pretrained=True, pretrained_cfg_overlay=dict(file='OUT.safetensors'))``.
"""
import argparse
import os

from ..errors import CommandError, MissingFileError
from ..models.resattnet import CAFFE_NETS
from .common import input_argument, output_argument

__all__ = ['configure', 'run']


def _caffe(args: argparse.Namespace) -> int:
    import timm

    from ..convert.caffe import convert_caffe_blobs, read_caffemodel
    from ..weights import save_state_dict

    if args.model not in CAFFE_NETS:
        raise CommandError(f'--model: unknown model {args.model!r} for Caffe weights; only the nets with an official '
                           f'Caffe definition convert: {", ".join(CAFFE_NETS)}')
    if not os.path.exists(args.input):
        raise MissingFileError(f'IN.caffemodel: file not found: {args.input!r}')
    if not os.path.isfile(args.input):
        raise CommandError(f'IN.caffemodel: {args.input!r} is not a file')
    try:
        blobs = read_caffemodel(args.input)
    except OSError as e:
        raise CommandError(f"IN.caffemodel: can't read {args.input!r}: {e.strerror or e}") from None
    state_dict = convert_caffe_blobs(blobs, args.model)
    model = timm.create_model(args.model, device='meta')
    metadata = {**model.weights_metadata(), 'source': 'caffe', 'caffemodel': os.path.basename(args.input)}
    try:
        save_state_dict(state_dict, args.output, metadata=metadata)
    except OSError as e:
        raise CommandError(f"can't write {args.output!r}: {e.strerror or e}") from None

    n_params = sum(v.numel() for k, v in state_dict.items() if k.endswith(('.weight', '.bias')))
    n_stats = sum(v.numel() for k, v in state_dict.items() if k.endswith(('.running_mean', '.running_var')))
    print(
        f'Wrote {args.output}: {args.model}, {len(state_dict)} tensors ({n_params:,} parameters, {n_stats:,} BN '
        f'running statistics) from {len(blobs)} Caffe layers of {args.input}.\n'
        f"Load it with timm.create_model({args.model!r}, pretrained=True, "
        f'pretrained_cfg_overlay=dict(file={args.output!r})).'
    )
    return 0


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest='format', metavar='FORMAT')
    sub.required = True
    caffe = sub.add_parser(
        'caffe',
        help="the authors' Caffe weights (.caffemodel) -> .safetensors",
        description=(
            "Convert the authors' Caffe weights of an official net (Attention-56/92, AttentionNeXt-56/92) to a "
            'safetensors state_dict. BN blob 3 is an inverse std and becomes running_var = inv_std**-2 - eps.'
        ),
    )
    input_argument(caffe, 'input', metavar='IN.caffemodel', label='IN.caffemodel',
                   help='binary Caffe weights (NetParameter)')
    output_argument(caffe, 'output', metavar='OUT.safetensors', label='OUT.safetensors', force_flag='force',
                    help='the state_dict to write')
    caffe.add_argument('--model', required=True, metavar='NAME', help=f'the net: {", ".join(CAFFE_NETS)}')
    caffe.add_argument('--force', action='store_true', help='overwrite OUT if it exists (never the input)')
    caffe.set_defaults(_convert=_caffe)


def run(args: argparse.Namespace) -> int:
    return args._convert(args)
