""" Command-line weight conversion.

    python -m timm_resattn.convert caffe IN.caffemodel OUT.safetensors --model resattnet92 [--force]

Writes a safetensors state_dict that loads with
``timm.create_model('resattnet92', pretrained=True, pretrained_cfg_overlay=dict(file='OUT.safetensors'))``.
Exits with status 2 and a message on stderr when the input cannot be converted.
"""
import argparse
import os
import sys
from typing import List, Optional

__all__ = ['main']


def _caffe(args: argparse.Namespace) -> int:
    from safetensors.torch import save_file

    from ..models.resattnet import model_cfgs
    from .caffe import convert_caffe_blobs, read_caffemodel

    if args.model not in model_cfgs:
        raise ValueError(f'unknown model {args.model!r}; choose one of {sorted(model_cfgs)}')
    if os.path.exists(args.output) and not args.force:
        raise ValueError(f'{args.output} exists; pass --force to overwrite it')
    blobs = read_caffemodel(args.input)
    state_dict = convert_caffe_blobs(blobs, args.model)

    tmp = f'{args.output}.tmp{os.getpid()}'
    try:
        save_file(state_dict, tmp, metadata={
            'format': 'pt',
            'source': 'caffe',
            'model': args.model,
            'caffemodel': os.path.basename(args.input),
        })
        os.replace(tmp, args.output)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)

    n_params = sum(v.numel() for k, v in state_dict.items() if k.endswith(('.weight', '.bias')))
    n_stats = sum(v.numel() for k, v in state_dict.items() if k.endswith(('.running_mean', '.running_var')))
    print(
        f'Wrote {args.output}: {args.model}, {len(state_dict)} tensors ({n_params:,} parameters, {n_stats:,} BN '
        f'running statistics) from {len(blobs)} Caffe layers of {args.input}.\n'
        f"Load it with timm.create_model({args.model!r}, pretrained=True, "
        f'pretrained_cfg_overlay=dict(file={args.output!r})).'
    )
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='python -m timm_resattn.convert',
        description='Convert Residual Attention Network weights to timm state_dicts.',
    )
    sub = parser.add_subparsers(dest='command', metavar='COMMAND')
    sub.required = True
    caffe = sub.add_parser(
        'caffe',
        help="the authors' Caffe weights (.caffemodel) -> .safetensors",
        description=(
            "Convert the authors' Caffe weights of an official net (Attention-56/92, AttentionNeXt-56/92) to a "
            'safetensors state_dict. BN blob 3 is an inverse std and becomes running_var = inv_std**-2 - eps.'
        ),
    )
    caffe.add_argument('input', metavar='IN.caffemodel', help='binary Caffe weights (NetParameter)')
    caffe.add_argument('output', metavar='OUT.safetensors', help='the state_dict to write')
    caffe.add_argument(
        '--model', required=True, metavar='NAME',
        help='timm model the weights are for: resattnet56, resattnet92, resattnext56 or resattnext92',
    )
    caffe.add_argument('--force', action='store_true', help='overwrite OUT if it exists')
    caffe.set_defaults(func=_caffe)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError) as e:  # CaffeModelError is a ValueError
        print(f'error: {e}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
