""" Hugging Face Hub export: thin wrappers over ``timm.models.save_for_hf`` / ``timm.models.push_to_hf_hub``.

Both write timm's own layout (``config.json`` + ``model.safetensors`` + ``README.md``), so the model loads back
with plain timm calls, **after** ``import timm_resattn`` (timm can only build architectures that are registered)::

    import timm, timm_resattn.export.hub
    timm_resattn.export.hub.save_pretrained(model, 'out/resattnet56.my_in1k')
    model = timm.create_model('local-dir:out/resattnet56.my_in1k', pretrained=True)

    timm_resattn.export.hub.push_to_hub(model, 'my-org/resattnet56.my_in1k',
                                        model_card_extra=dict(dataset='imagenet-1k', reported_accuracy=dict(top1=78.1)))
    model = timm.create_model('hf-hub:my-org/resattnet56.my_in1k', pretrained=True)

What the wrappers add to timm's functions:

* ``model_args`` in ``config.json`` for every architecture field that differs from the registered variant's
  (e.g. ``attention_residual=False``, ``mask_type='local'``), so that reloading rebuilds the same network even when
  the model was not made by ``timm.create_model`` (which records its kwargs itself in timm >= 1.0.31), e.g. by
  ``torch.hub.load``. ``config.json`` never contradicts the weights' header: arguments that describe another net
  than the model (``model_args={'mask_act': 'channel'}`` for a ``'mixed'`` model) are refused, and the written
  ``config.json`` is rebuilt (on the meta device) and compared with the model before anything is moved into place.
* a model card saying that ``pip install timm-resattn`` and ``import timm_resattn`` are required, citing the
  paper, and marking any accuracy you pass as *reported* (not measured by this package).
* safetensors weights only (timm's default for ``save_for_hf`` is a pickle ``pytorch_model.bin``).
"""
import dataclasses
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch

from huggingface_hub import HfApi

from ..errors import ExportError, ResAttnError
from ..models.resattnet import ResidualAttentionNet, model_cfgs
from ..weights import ARCH_CFG_KEY, atomic_write, save_state_dict

__all__ = ['architecture_args', 'model_card', 'save_pretrained', 'push_to_hub']

PAPER_TITLE = 'Residual Attention Network for Image Classification'
PAPER_URL = 'https://arxiv.org/abs/1704.06904'
PACKAGE = 'timm-resattn'
CITATION = """@inproceedings{wang2017residual,
  title={Residual Attention Network for Image Classification},
  author={Wang, Fei and Jiang, Mengqing and Qian, Chen and Yang, Shuo and Li, Cheng and Zhang, Honggang and Wang, Xiaogang and Tang, Xiaoou},
  booktitle={Proceedings of the IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  year={2017}
}"""

_CARD_EXTRA_KEYS = ('dataset', 'reported_accuracy', 'description', 'details', 'citation', 'license')


def _check_model(model: torch.nn.Module) -> str:
    if not isinstance(model, ResidualAttentionNet):
        raise TypeError(
            f'expected a timm_resattn ResidualAttentionNet (not a features_only / wrapped model), got '
            f'{type(model).__name__}')
    arch = (getattr(model, 'pretrained_cfg', None) or {}).get('architecture')
    if arch not in model_cfgs:
        raise ExportError(f"model.pretrained_cfg['architecture']={arch!r} is not a registered timm_resattn model")
    return arch


def _check_rebuildable(model: torch.nn.Module, arch: str, args: Dict[str, Any], where: str = 'model_args') -> None:
    """ Refuse reconstruction ``args`` that don't rebuild ``model``: a model whose tensors the architecture no longer
    has (BN folded by ``fuse_bn``, layers pruned by ``prune_intermediate_layers``, modules swapped), whose export
    would be a folder that fails to load, or ``args`` that describe a net computing something else than the weights
    (a ``config.json`` contradicting the weights' header, so a load of the folder would be refused). """
    import timm
    try:
        rebuilt = timm.create_model(
            arch, device='meta', **{'num_classes': model.num_classes, 'in_chans': model.in_chans, **args})
    except (ResAttnError, TypeError, ValueError) as e:
        raise ExportError(f"can't export this {arch}: its {where} {args!r:.300} don't build it: {e}") from None
    want = {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if want != have:
        diff = sorted(set(want) ^ set(have)) or sorted(k for k in want if want[k] != have[k])
        raise ExportError(
            f"can't export this {arch}: its tensors are no longer those of the architecture ({len(diff)} differ, "
            f"e.g. {', '.join(diff[:3])}), so the exported folder would not load. BN folding (fuse_bn) and "
            f"prune_intermediate_layers are for deployment: export the model before applying them."
        )
    described = json.loads(rebuilt.weights_metadata()[ARCH_CFG_KEY])
    computes = json.loads(model.weights_metadata()[ARCH_CFG_KEY])
    differ = [f for f in computes if described.get(f) != computes[f]]
    if differ:
        raise ExportError(
            f"can't export this {arch} with {where} {args!r:.300}: they describe "
            f"{', '.join(f'{f}={described.get(f)!r}' for f in differ)}, and the model (whose weights and header are "
            f"written) computes {', '.join(f'{f}={computes[f]!r}' for f in differ)}. config.json would contradict "
            f"the weights: leave these fields out of model_args (they are taken from the model).")


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value


def _act_layer_arg(name: str) -> str:
    """ ``act_layer`` for config.json: the activation's class name where ``timm.layers.get_act_layer`` resolves it
    back to that class (it reads names case-blind: 'SiLU' -> ``nn.SiLU``). """
    from timm.layers import get_act_layer
    try:
        layer = get_act_layer(name)
    except (KeyError, ValueError, TypeError):
        layer = None
    if getattr(layer, '__name__', None) != name:
        raise ExportError(
            f"can't export this model: its activation {name!r} is not one timm.layers.get_act_layer can name, so "
            f"config.json could not rebuild it; build the model with act_layer given by name ('relu', 'silu', ...)")
    return name


def architecture_args(model: torch.nn.Module) -> Dict[str, Any]:
    """ Architecture fields of ``model.cfg`` that differ from its registered variant, a non-default
    ``output_stride`` and a non-ReLU ``act_layer`` (JSON-ready ``model_args``). """
    base = model_cfgs[_check_model(model)]
    args = {
        f.name: _jsonable(getattr(model.cfg, f.name))
        for f in dataclasses.fields(model.cfg)
        if getattr(model.cfg, f.name) != getattr(base, f.name)
    }
    if getattr(model, 'output_stride', None):
        args['output_stride'] = model.output_stride
    if model.act_name != 'ReLU':
        args['act_layer'] = _act_layer_arg(model.act_name)
    return args


def _recorded_args(model: torch.nn.Module) -> Dict[str, Any]:
    """ The model's current, normalised values of the arguments ``timm.create_model`` recorded as given (timm writes
    those to config.json too; a numpy scalar or an ``nn.Module`` class given there would not serialise). """
    recorded = getattr(model, '_model_args', None) or {}  # what timm.create_model was given (timm >= 1.0.31)
    cfg_fields = {f.name for f in dataclasses.fields(model.cfg)}
    args: Dict[str, Any] = {}
    for key in recorded:
        if key in cfg_fields:
            args[key] = _jsonable(getattr(model.cfg, key))
        elif key == 'act_layer':
            args[key] = _act_layer_arg(model.act_name)
        elif key == 'output_stride':
            args[key] = model.output_stride
        elif key == 'zero_init_last':
            args[key] = bool(recorded[key])  # checked by the constructor: a bool or a numpy bool
    return args


def _format_accuracy(reported: Dict[str, Any]) -> str:
    reported = dict(reported)
    source = reported.pop('source', None)
    values = ', '.join(f'{k} {v}' for k, v in reported.items())
    by = f'as reported by {source}' if source else 'as reported by the uploader'
    return f'{values} ({by}; not measured by {PACKAGE})'


def model_card(
        model: torch.nn.Module,
        repo_id: Optional[str] = None,
        model_card_extra: Optional[Dict[str, Any]] = None,
        model_args: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """ timm ``model_card`` dict (rendered by ``timm.models._hub.generate_readme``) for a timm-resattn model.

    Args:
        model: The model.
        repo_id: ``org/name`` on the Hub (shown in the usage snippet).
        model_card_extra: Optional ``dataset`` (e.g. ``'imagenet-1k'``), ``reported_accuracy`` (dict of metric ->
            value, plus an optional ``source``; rendered as reported, not measured), ``description`` (appended),
            ``details`` (dict merged into the details list), ``citation`` (extra BibTeX), ``license``.
        model_args: Non-default architecture arguments (shown in the details).
    """
    arch = _check_model(model)
    extra = dict(model_card_extra or {})
    unknown = sorted(set(extra) - set(_CARD_EXTRA_KEYS))
    if unknown:
        raise ValueError(f'unknown model_card_extra key(s) {unknown}; expected some of {list(_CARD_EXTRA_KEYS)}')
    cfg = model.pretrained_cfg
    hub_name = f'hf-hub:{repo_id}' if repo_id else 'hf-hub:<org>/<name>'
    params = sum(p.numel() for p in model.parameters())
    input_size = cfg.get('input_size', (3, 224, 224))

    description = (
        f'A Residual Attention Network (`{arch}`) image classifier for [timm](https://github.com/huggingface/'
        f'pytorch-image-models), built with the `{PACKAGE}` plugin.\n\n'
        f'**This architecture is not part of timm.** It is registered by the `{PACKAGE}` package: run '
        f'`pip install {PACKAGE}` and `import timm_resattn` before `timm.create_model(\'{hub_name}\', '
        f'pretrained=True)`, otherwise timm fails with `RuntimeError: Unknown model ({arch})`. For the same reason '
        f'the Hub\'s hosted inference widget cannot run this model.'
    )
    if extra.get('description'):
        description += '\n\n' + extra['description']

    details: Dict[str, Any] = {
        'Model Type': 'Image classification / feature backbone',
        'Architecture': f'`{arch}`' + (f' with `{json.dumps(model_args)}`' if model_args else ''),
        'Params (M)': f'{params / 1e6:.2f}',
        'Image size': f'{input_size[-2]} x {input_size[-1]}',
        'Classes': model.num_classes,
        'Papers': {PAPER_TITLE: PAPER_URL},
        'Original': cfg.get('origin_url') or 'https://github.com/fwang91/residual-attention-network',
        'Requires': f'`pip install {PACKAGE}` and `import timm_resattn`',
    }
    if extra.get('dataset'):
        details['Dataset'] = extra['dataset']
    if extra.get('reported_accuracy'):
        details['Reported accuracy'] = _format_accuracy(extra['reported_accuracy'])
    details.update(extra.get('details') or {})

    usage = (
        '```bash\n'
        f'pip install {PACKAGE}\n'
        '```\n\n'
        '```python\n'
        'import timm\n'
        'import timm_resattn  # required: registers the Residual Attention Network architectures with timm\n\n'
        f"model = timm.create_model('{hub_name}', pretrained=True).eval()\n"
        'data_config = timm.data.resolve_model_data_config(model)\n'
        'transform = timm.data.create_transform(**data_config, is_training=False)\n'
        '# logits = model(transform(img).unsqueeze(0))\n'
        '```\n'
    )
    citations = [CITATION]
    if extra.get('citation'):
        more = extra['citation']
        citations += list(more) if isinstance(more, (list, tuple)) else [more]
    return {
        'tags': ['image-classification', 'timm', PACKAGE, 'residual-attention-network'],
        'library_name': 'timm',
        'license': extra.get('license') or cfg.get('license') or 'apache-2.0',
        'description': description,
        'details': details,
        'usage': usage,
        'citation': citations,
    }


def _export_args(
        model: torch.nn.Module,
        model_args: Optional[Dict[str, Any]],
        model_config: Optional[Dict[str, Any]],
) -> Tuple[Dict[str, Any], Optional[Dict[str, Any]]]:
    """ The checked reconstruction args (the model's own, then ``model_config['model_args']``, then ``model_args``)
    and ``model_config`` without them: merged here, so every timm writes the same ``config.json`` (older timm
    replaced ``model_args`` with ``model_config``'s instead of merging them). """
    args = architecture_args(model)  # first: refuses a wrapper (features_only) by name
    args = {**_recorded_args(model), **args}
    if model_config and 'model_args' in model_config:
        model_config = dict(model_config)
        args.update(model_config.pop('model_args') or {})
    args.update(model_args or {})
    _check_rebuildable(model, _check_model(model), args)
    return args, model_config


EXPORT_FILES = ('config.json', 'model.safetensors', 'pytorch_model.bin', 'README.md')


def save_pretrained(
        model: torch.nn.Module,
        directory: Union[str, Path],
        model_card_extra: Optional[Dict[str, Any]] = None,
        repo_id: Optional[str] = None,
        model_args: Optional[Dict[str, Any]] = None,
        model_config: Optional[Dict[str, Any]] = None,
        safe_serialization: Union[bool, str] = True,
        overwrite: bool = False,
) -> Path:
    """ Write ``config.json``, ``model.safetensors`` and a ``README.md`` model card into ``directory``.

    Reload with ``timm.create_model('local-dir:' + directory, pretrained=True)`` (after ``import timm_resattn``),
    or upload the folder to the Hub. ``model_args`` adds reconstruction arguments (the non-default architecture
    fields are added automatically from the model; ``model_args`` that contradict what the model computes are
    refused, so ``config.json`` and the weights' header always describe the same net); ``model_config`` goes to timm's ``save_for_hf`` (e.g.
    ``label_names``); ``safe_serialization`` as in timm (``True``: safetensors only). The safetensors header
    records the architecture (``weights_metadata``), so a load into a net that computes something else is refused.

    The folder is created if needed (its parent must exist). Files are written beside it first and moved in at the
    end (0644), so a failure leaves nothing half-written. A folder that already holds any of ``EXPORT_FILES`` is
    refused unless ``overwrite=True``; other files in it are never touched. A model that can't be rebuilt from its
    architecture (BN-folded, pruned) is refused.
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ExportError(f"can't export into '{directory}': it is a file, not a folder")
    if not directory.parent.is_dir():
        raise ExportError(f"can't export into '{directory}': the folder '{directory.parent}' does not exist")
    present = [f for f in EXPORT_FILES if (directory / f).exists()]
    if present and not overwrite:
        raise ExportError(
            f"'{directory}' already holds {', '.join(present)}: saving would overwrite them. Choose an empty "
            f"folder, or pass overwrite=True.")
    args, model_config = _export_args(model, model_args, model_config)
    _write_export(model, directory, args, repo_id, model_card_extra, model_config, safe_serialization)
    return directory


def _write_export(
        model: torch.nn.Module,
        directory: Path,
        args: Dict[str, Any],
        repo_id: Optional[str],
        model_card_extra: Optional[Dict[str, Any]],
        model_config: Optional[Dict[str, Any]],
        safe_serialization: Union[bool, str],
) -> None:
    """ ``save_pretrained``'s writing, for a model and reconstruction ``args`` already checked (``_export_args``). """
    from timm.models import save_for_hf
    from timm.models._hub import generate_readme  # timm exports no public name for it

    card = model_card(model, repo_id=repo_id, model_card_extra=model_card_extra, model_args=args)
    name = repo_id.split('/')[-1] if repo_id else directory.name
    with tempfile.TemporaryDirectory(prefix=f'.{directory.name}.', dir=directory.parent) as tmp:
        tmp = Path(tmp)
        save_for_hf(model, tmp, model_config=model_config, model_args=args, safe_serialization=safe_serialization)
        written = json.loads((tmp / 'config.json').read_text(encoding='utf-8'))  # what timm recorded, merged
        _check_rebuildable(model, written['architecture'], written.get('model_args') or {}, where='config.json')
        weights = tmp / 'model.safetensors'
        if weights.exists():  # the same tensors, with the architecture metadata in the header
            save_state_dict(model.state_dict(), weights, metadata=model.weights_metadata())
        (tmp / 'README.md').write_text(generate_readme(card, name), encoding='utf-8')
        directory.mkdir(exist_ok=True)
        for f in tmp.iterdir():  # each file moved in whole, with normal permissions
            atomic_write(directory / f.name, lambda dst, src=f: shutil.move(src, dst))


def push_to_hub(
        model: torch.nn.Module,
        repo_id: str,
        model_card_extra: Optional[Dict[str, Any]] = None,
        model_args: Optional[Dict[str, Any]] = None,
        model_config: Optional[Dict[str, Any]] = None,
        commit_message: str = 'Add model',
        token: Optional[str] = None,
        revision: Optional[str] = None,
        private: bool = False,
        create_pr: bool = False,
        safe_serialization: Union[bool, str] = True,
):
    """ Upload ``model`` to ``repo_id`` in exactly the layout ``save_pretrained`` writes (architecture metadata in
    the safetensors header included), the way ``timm.models.push_to_hf_hub`` does it: create the repo if needed,
    write the model card only when the repo has no ``README.md`` yet, upload the folder. Returns what
    ``HfApi.upload_folder`` returns (the commit info).
    """
    from timm import __version__ as timm_version

    # refuse a model that can't be exported before touching the Hub
    args, model_config = _export_args(model, model_args, model_config)
    api = HfApi(token=token, library_name='timm', library_version=timm_version)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    has_readme = api.file_exists(repo_id=repo_id, filename='README.md', revision=revision)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / repo_id.split('/')[-1]
        _write_export(model, folder, args, repo_id, model_card_extra, model_config, safe_serialization)
        if has_readme:
            (folder / 'README.md').unlink()
        return api.upload_folder(
            repo_id=repo_id, folder_path=folder, revision=revision, create_pr=create_pr,
            commit_message=commit_message)
