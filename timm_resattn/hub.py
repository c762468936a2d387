""" Hugging Face Hub export: thin wrappers over ``timm.models.save_for_hf`` / ``timm.models.push_to_hf_hub``.

Both write timm's own layout (``config.json`` + ``model.safetensors`` + ``README.md``), so the model loads back
with plain timm calls, **after** ``import timm_resattn`` (timm can only build architectures that are registered)::

    import timm, timm_resattn
    timm_resattn.hub.save_pretrained(model, 'out/resattnet56.my_in1k')
    model = timm.create_model('local-dir:out/resattnet56.my_in1k', pretrained=True)

    timm_resattn.hub.push_to_hub(model, 'my-org/resattnet56.my_in1k',
                                 model_card_extra=dict(dataset='imagenet-1k', reported_accuracy=dict(top1=78.1)))
    model = timm.create_model('hf-hub:my-org/resattnet56.my_in1k', pretrained=True)

What the wrappers add to timm's functions:

* ``model_args`` in ``config.json`` for every architecture field that differs from the registered variant's
  (e.g. ``attention_residual=False``, ``mask_type='local'``), so that reloading rebuilds the same network even when
  the model was not made by ``timm.create_model`` (which records its kwargs itself in timm >= 1.0.31), e.g. by
  ``torch.hub.load``.
* a model card saying that ``pip install timm-resattn`` and ``import timm_resattn`` are required, citing the
  paper, and marking any accuracy you pass as *reported* (not measured by this package).
* safetensors weights only (timm's default for ``save_for_hf`` is a pickle ``pytorch_model.bin``).
"""
import dataclasses
import json
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch

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
    from .models.resattnet import ResidualAttentionNet, model_cfgs
    if not isinstance(model, ResidualAttentionNet):
        raise TypeError(
            f'expected a timm_resattn ResidualAttentionNet (not a features_only / wrapped model), got '
            f'{type(model).__name__}')
    arch = (getattr(model, 'pretrained_cfg', None) or {}).get('architecture')
    if arch not in model_cfgs:
        raise ValueError(f"model.pretrained_cfg['architecture']={arch!r} is not a registered timm_resattn model")
    return arch


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value


def architecture_args(model: torch.nn.Module) -> Dict[str, Any]:
    """ Architecture fields of ``model.cfg`` that differ from its registered variant (JSON-ready ``model_args``). """
    from .models.resattnet import model_cfgs
    base = model_cfgs[_check_model(model)]
    return {
        f.name: _jsonable(getattr(model.cfg, f.name))
        for f in dataclasses.fields(model.cfg)
        if getattr(model.cfg, f.name) != getattr(base, f.name)
    }


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


def _export_args(model: torch.nn.Module, model_args: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    args = architecture_args(model)
    args.update(model_args or {})
    return args


def save_pretrained(
        model: torch.nn.Module,
        directory: Union[str, Path],
        model_card_extra: Optional[Dict[str, Any]] = None,
        repo_id: Optional[str] = None,
        model_args: Optional[Dict[str, Any]] = None,
        model_config: Optional[Dict[str, Any]] = None,
        safe_serialization: Union[bool, str] = True,
) -> Path:
    """ Write ``config.json``, ``model.safetensors`` and a ``README.md`` model card into ``directory``.

    Reload with ``timm.create_model('local-dir:' + directory, pretrained=True)`` (after ``import timm_resattn``),
    or upload the folder to the Hub. ``model_args`` adds/overrides reconstruction arguments (the non-default
    architecture fields are added automatically); ``model_config`` goes to timm's ``save_for_hf`` (e.g.
    ``label_names``); ``safe_serialization`` as in timm (``True``: safetensors only).
    """
    from timm.models import save_for_hf
    from timm.models._hub import generate_readme

    directory = Path(directory)
    args = _export_args(model, model_args)
    save_for_hf(model, directory, model_config=model_config, model_args=args, safe_serialization=safe_serialization)
    card = model_card(model, repo_id=repo_id, model_card_extra=model_card_extra, model_args=args)
    name = repo_id.split('/')[-1] if repo_id else directory.name
    (directory / 'README.md').write_text(generate_readme(card, name), encoding='utf-8')
    return directory


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
    """ Upload ``model`` to ``repo_id`` with ``timm.models.push_to_hf_hub``, in the layout of ``save_pretrained``.

    As in timm, the model card is written only when the repo has no ``README.md`` yet. Returns what
    ``HfApi.upload_folder`` returns (the commit info).
    """
    from timm.models import push_to_hf_hub

    args = _export_args(model, model_args)
    card = model_card(model, repo_id=repo_id, model_card_extra=model_card_extra, model_args=args)
    return push_to_hf_hub(
        model,
        repo_id,
        commit_message=commit_message,
        token=token,
        revision=revision,
        private=private,
        create_pr=create_pr,
        model_config=model_config,
        model_card=card,
        model_args=args,
        safe_serialization=safe_serialization,
    )
