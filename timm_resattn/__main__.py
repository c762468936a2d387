""" ``python -m timm_resattn``: list the registered models, or classify an image with one.

    python -m timm_resattn                                   # every model: params, GMACs, input size, weights
    python -m timm_resattn --image cat.jpg --model resattnet56 --checkpoint my_weights.safetensors
"""
import argparse
import sys
from typing import List, Optional

import torch

import timm
import timm_resattn  # noqa: F401  (registers the models)
from timm_resattn.flops import count_macs

CIFAR10_CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck')


def model_summary(name: str) -> dict:
    """ Params, MACs at the default input size, input sizes and weight tags of one registered model.

    The model is built on the meta device: shapes and MAC counts without allocating or computing anything.
    """
    model = timm.create_model(name, device='meta').eval()
    cfg = model.pretrained_cfg
    input_size = tuple(cfg['input_size'])
    tags_with_weights = [t for t in timm.list_pretrained(name)]
    return dict(
        model=name,
        params=sum(p.numel() for p in model.parameters()),
        gmacs=count_macs(model, input_size) / 1e9,
        input_size=input_size,
        test_input_size=tuple(cfg.get('test_input_size') or input_size),
        num_classes=cfg['num_classes'],
        weights=tags_with_weights,
    )


def print_model_table(names: List[str], file=None) -> None:
    file = file or sys.stdout
    header = f"{'model':<22} {'params':>12} {'GMACs':>7} {'input':>9} {'test':>9} {'classes':>7}  weights"
    print(header, file=file)
    print('-' * len(header), file=file)
    for name in names:
        s = model_summary(name)
        weights = ', '.join(s['weights']) if s['weights'] else 'none (architecture only)'
        print(
            f"{s['model']:<22} {s['params']:>12,d} {s['gmacs']:>7.3f} {s['input_size'][-1]:>9d} "
            f"{s['test_input_size'][-1]:>9d} {s['num_classes']:>7d}  {weights}",
            file=file,
        )
    print('\nGMACs: multiply-accumulates of one image at the default input size (FlopCounterMode / 2).', file=file)


def _label_names(num_classes: int) -> Optional[List[str]]:
    if num_classes == 1000:
        from timm.data import ImageNetInfo
        info = ImageNetInfo()
        return [info.index_to_description(i) for i in range(1000)]
    if num_classes == 10:
        return list(CIFAR10_CLASSES)
    return None


def classify(image: str, model_name: str, pretrained: bool, checkpoint: Optional[str], topk: int) -> int:
    from PIL import Image, UnidentifiedImageError
    from timm.data import create_transform, resolve_data_config

    try:
        img = Image.open(image).convert('RGB')
    except FileNotFoundError:
        print(f'error: image not found: {image}', file=sys.stderr)
        return 2
    except (UnidentifiedImageError, OSError) as e:
        print(f'error: cannot read image {image}: {e}', file=sys.stderr)
        return 2
    try:
        model = timm.create_model(model_name, pretrained=pretrained, checkpoint_path=checkpoint or '')
    except RuntimeError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f'error: checkpoint not found: {e}', file=sys.stderr)
        return 2
    model.eval()
    if not pretrained and not checkpoint:
        print('warning: no --pretrained or --checkpoint given: this is a randomly initialised network, '
              'its predictions mean nothing.', file=sys.stderr)
    config = resolve_data_config({}, model=model)
    transform = create_transform(**config)
    x = transform(img).unsqueeze(0)
    with torch.no_grad():
        probs = model(x).softmax(dim=-1)[0]
    k = min(topk, probs.numel())
    values, indices = probs.topk(k)
    names = _label_names(probs.numel())
    print(f'{model_name} on {image} (input {tuple(x.shape[-2:])}, crop_pct {config["crop_pct"]}, '
          f'{config["interpolation"]}):')
    for rank, (p, i) in enumerate(zip(values.tolist(), indices.tolist()), start=1):
        label = names[i] if names else f'class {i}'
        print(f'{rank}. {p * 100:6.2f}%  {i:>4d}  {label}')
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog='python -m timm_resattn',
        description='List the Residual Attention Network models registered with timm, or classify an image.',
    )
    parser.add_argument('--image', help='classify this image file (prints the top-k classes)')
    parser.add_argument('--model', default='resattnet56', help='model name (default: %(default)s)')
    parser.add_argument('--pretrained', action='store_true', help="load the model's published weights")
    parser.add_argument('--checkpoint', help='load weights from this file (.safetensors, or a timm .pth)')
    parser.add_argument('--topk', type=int, default=5)
    parser.add_argument('--filter', default='*', help='with no --image: list only models matching this pattern')
    args = parser.parse_args(argv)

    if args.image is None:
        names = timm.list_models(args.filter, module='resattnet')
        if not names:
            print(f'error: no registered model matches {args.filter!r}', file=sys.stderr)
            return 2
        print_model_table(names)
        return 0
    if not timm.is_model(args.model) or args.model not in timm.list_models(module='resattnet'):
        known = ', '.join(timm.list_models(module='resattnet'))
        print(f'error: unknown model {args.model!r}; registered Residual Attention models: {known}', file=sys.stderr)
        return 2
    return classify(args.image, args.model, args.pretrained, args.checkpoint, args.topk)


if __name__ == '__main__':
    sys.exit(main())
