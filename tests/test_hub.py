""" Hubs, offline: torch.hub's GitHub form from a pre-filled cache, Hugging Face Hub export (save_pretrained ->
local-dir:, an offline HF cache -> hf-hub:, push_to_hub with a stand-in HfApi). """
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from urllib.error import URLError

import pytest
import torch

import timm
import timm_resattn  # noqa: F401
from timm_resattn.export import hub
from timm_resattn.models.resattnet import resattnet56_cifar

REPO_ROOT = Path(__file__).resolve().parents[1]
NAME = 'resattnet56_cifar'
X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))

pytestmark = pytest.mark.usefixtures('one_thread')


def _trained_like(model):
    """ Give BN non-trivial running statistics so that the outputs depend on every buffer. """
    with torch.no_grad():
        model.train()(torch.randn(8, 3, 32, 32))
    return model.eval()


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    """ A non-default architecture (no attention residual, 7 classes) exported with save_pretrained. """
    torch.manual_seed(0)
    model = _trained_like(timm.create_model(NAME, num_classes=7, attention_residual=False))
    with torch.no_grad():
        out = model(X)
    directory = hub.save_pretrained(
        model,
        tmp_path_factory.mktemp('export') / f'{NAME}.test',
        repo_id=f'org/{NAME}.test',
        model_card_extra=dict(dataset='cifar10', reported_accuracy=dict(top1=95.01, source='the uploader\'s log')),
    )
    return model, out, directory


# ---------------------------------------------------------------------------------------------------------------
# torch.hub, GitHub form, offline


def _fill_torch_hub_cache(torch_home: Path, owner: str, repo: str, ref: str) -> Path:
    """ torch.hub keeps a GitHub repo it downloaded in $TORCH_HOME/hub/<owner>_<repo>_<ref> ('/' in ref -> '_'),
    see torch.hub._get_cache_or_reload: when that folder exists (and force_reload=False) it is used as is. """
    repo_dir = torch_home / 'hub' / '_'.join([owner, repo, ref.replace('/', '_')])
    repo_dir.mkdir(parents=True)
    for f in ('hubconf.py', 'pyproject.toml', 'README.md'):
        if (REPO_ROOT / f).exists():
            shutil.copy2(REPO_ROOT / f, repo_dir / f)
    shutil.copytree(REPO_ROOT / 'timm_resattn', repo_dir / 'timm_resattn', ignore=shutil.ignore_patterns('__pycache__'))
    return repo_dir


def _no_network(*args, **kwargs):
    raise URLError('no network in tests')


def test_torch_hub_github_form_offline(tmp_path, monkeypatch, exported):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    monkeypatch.setattr(torch.hub, '_hub_dir', None)  # honour TORCH_HOME even if set_dir() was called
    monkeypatch.setattr(torch.hub, 'urlopen', _no_network)  # any network access would fail loudly
    repo_dir = _fill_torch_hub_cache(tmp_path / 'torch', 'owner', 'timm-resattn', 'main')
    assert torch.hub.get_dir() == str(tmp_path / 'torch' / 'hub')

    # trust_repo=True: never an interactive prompt (a repo folder already in the cache also counts as trusted);
    # skip_validation=True: no GitHub API call to check the ref (torch only makes it when downloading anyway)
    model = torch.hub.load('owner/timm-resattn:main', NAME, trust_repo=True, skip_validation=True, num_classes=3)
    assert model.num_classes == 3 and model.pretrained_cfg['architecture'] == NAME
    # without ':ref' torch.hub asks GitHub for the default branch; offline it falls back to a cached main/master
    model = torch.hub.load('owner/timm-resattn', NAME, trust_repo=True, skip_validation=True)
    assert model.num_classes == 10
    assert NAME in torch.hub.list('owner/timm-resattn:main', trust_repo=True)
    assert 'CIFAR Attention-56' in torch.hub.help('owner/timm-resattn:main', NAME, trust_repo=True)
    assert repo_dir.is_dir() and not list((tmp_path / 'torch' / 'hub').glob('*.zip'))  # nothing downloaded

    # pretrained= passes through: no weights -> the clear error; a file overlay -> loaded
    with pytest.raises(RuntimeError, match='No pretrained weights exist'):
        torch.hub.load('owner/timm-resattn:main', NAME, trust_repo=True, pretrained=True)
    ref, out, directory = exported
    loaded = torch.hub.load(
        'owner/timm-resattn:main', NAME, trust_repo=True, pretrained=True, num_classes=7, attention_residual=False,
        pretrained_cfg_overlay=dict(file=str(directory / 'model.safetensors'), num_classes=7),
    ).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(X), out, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------------------
# Hugging Face Hub layout


def test_save_pretrained_layout_and_card(exported):
    _, _, directory = exported
    assert sorted(p.name for p in directory.iterdir()) == ['README.md', 'config.json', 'model.safetensors']
    config = json.loads((directory / 'config.json').read_text())
    assert config['architecture'] == NAME and config['num_classes'] == 7
    assert config['model_args']['attention_residual'] is False
    assert config['pretrained_cfg']['mean'] == list(timm_resattn.models.resattnet.CIFAR10_MEAN)
    assert 'file' not in config['pretrained_cfg'] and 'state_dict' not in config['pretrained_cfg']

    card = (directory / 'README.md').read_text()
    assert card.startswith('---\n') and 'library_name: timm' in card and '- timm-resattn' in card
    assert 'pip install timm-resattn' in card and 'import timm_resattn' in card
    assert f"timm.create_model('hf-hub:org/{NAME}.test', pretrained=True)" in card
    assert 'Residual Attention Network for Image Classification' in card and 'arxiv.org/abs/1704.06904' in card
    assert '@inproceedings{wang2017residual' in card
    assert 'top1 95.01 (as reported by the uploader\'s log; not measured by timm-resattn)' in card
    assert '"attention_residual": false' in card


def test_local_dir_reproduces_outputs(exported):
    _, out, directory = exported
    model = timm.create_model(f'local-dir:{directory}', pretrained=True).eval()
    assert model.cfg.attention_residual is False and model.num_classes == 7
    with torch.no_grad():
        torch.testing.assert_close(model(X), out, rtol=0, atol=0)
    # fine-tuning from the export: new head, same body
    ft = timm.create_model(f'local-dir:{directory}', pretrained=True, num_classes=4)
    assert ft.get_classifier().out_features == 4
    torch.testing.assert_close(ft.stem.conv.weight, model.stem.conv.weight)


def test_model_args_without_create_model(tmp_path):
    """ A model built by calling the entrypoint (as torch.hub does) has no recorded kwargs; the non-default
    architecture fields still reach config.json. """
    torch.manual_seed(0)
    model = _trained_like(resattnet56_cifar(attention_residual=False, mask_act='spatial'))
    assert not getattr(model, '_model_args', None)
    assert hub.architecture_args(model) == {'attention_residual': False, 'mask_act': 'spatial'}
    directory = hub.save_pretrained(model, tmp_path / 'export')
    config = json.loads((directory / 'config.json').read_text())
    assert config['model_args']['attention_residual'] is False and config['model_args']['mask_act'] == 'spatial'
    loaded = timm.create_model(f'local-dir:{directory}', pretrained=True).eval()
    assert loaded.cfg == model.cfg
    with torch.no_grad():
        torch.testing.assert_close(loaded(X), model(X), rtol=0, atol=0)
    # tuples (e.g. stage_modules) go to JSON lists and come back as tuples
    model = resattnet56_cifar(stage_modules=(2, 1, 1))
    assert hub.architecture_args(model) == {'stage_modules': [2, 1, 1]}


def test_save_pretrained_rejects_wrappers(tmp_path):
    feats = timm.create_model(NAME, features_only=True)
    with pytest.raises(TypeError, match='ResidualAttentionNet'):
        hub.save_pretrained(feats, tmp_path / 'x')
    with pytest.raises(ValueError, match='model_card_extra'):
        hub.model_card(timm.create_model(NAME), model_card_extra=dict(accuracy=1.0))


_HF_CHILD = textwrap.dedent('''
    import sys, torch, timm
    import timm_resattn  # required before timm.create_model('hf-hub:...')
    torch.set_num_threads(1)
    x, out = torch.load(sys.argv[1])
    model = timm.create_model('hf-hub:org/resattnet56_cifar.test', pretrained=True).eval()
    assert model.cfg.attention_residual is False and model.num_classes == 7
    assert model.pretrained_cfg['hf_hub_id'] == 'org/resattnet56_cifar.test'
    with torch.no_grad():
        torch.testing.assert_close(model(x), out, rtol=0, atol=0)
    ft = timm.create_model('hf-hub:org/resattnet56_cifar.test', pretrained=True, num_classes=3, in_chans=1)
    torch.testing.assert_close(ft.stem.conv.weight, model.stem.conv.weight.sum(dim=1, keepdim=True))
    try:
        timm.create_model('hf-hub:org/not-in-cache', pretrained=True)
    except Exception as e:
        print('MISSING-REPO', type(e).__name__)
    from timm_resattn.weights import WeightsError
    try:  # the header of the cached model.safetensors is read: same shapes, another function
        timm.create_model('hf-hub:org/resattnet56_cifar.test', pretrained=True, max_pool='torch')
    except WeightsError as e:
        assert "written for resattnet56_cifar (max_pool='caffe')" in str(e), str(e)
        print('OVERRIDE-REFUSED')
    try:  # a repo whose config.json contradicts its weights' header
        timm.create_model('hf-hub:org/resattnet56_cifar.edited', pretrained=True)
    except WeightsError as e:
        assert "config.json of 'org/resattnet56_cifar.edited' describes" in str(e), str(e)
        print('CONTRADICTION-REFUSED')
    # a cache_dir= of its own (not the default cache): the same checks read the files timm put there
    other = timm.create_model('hf-hub:org/resattnet56_cifar.other', pretrained=True, cache_dir=sys.argv[2]).eval()
    with torch.no_grad():
        torch.testing.assert_close(other(x), out, rtol=0, atol=0)
    try:
        timm.create_model('hf-hub:org/resattnet56_cifar.other-edited', pretrained=True, cache_dir=sys.argv[2])
    except WeightsError as e:
        assert "config.json of 'org/resattnet56_cifar.other-edited' describes" in str(e), str(e)
        print('CACHE-DIR-CONTRADICTION-REFUSED')
    print('HF-HUB-OK')
''')


def _fill_hf_cache(cache: Path, repo_id: str, files, commit: str = 'a' * 40) -> Path:
    """ huggingface_hub's cache layout: <cache>/models--<org>--<name>/refs/main holds the commit hash of main, and
    snapshots/<commit>/<file> the files (real downloads are symlinks into blobs/; plain files work the same). """
    repo_dir = cache / ('models--' + repo_id.replace('/', '--'))
    snapshot = repo_dir / 'snapshots' / commit
    snapshot.mkdir(parents=True)
    (repo_dir / 'refs').mkdir()
    (repo_dir / 'refs' / 'main').write_text(commit)
    for f in files:
        shutil.copy2(f, snapshot / f.name)
    return snapshot


@pytest.mark.subprocess
def test_hf_hub_offline_cache(exported, tmp_path):
    _, out, directory = exported
    cache = tmp_path / 'hf' / 'hub'
    snapshot = _fill_hf_cache(cache, f'org/{NAME}.test', sorted(directory.iterdir()))
    edited = _fill_hf_cache(cache, f'org/{NAME}.edited', sorted(directory.iterdir()))
    config = json.loads((edited / 'config.json').read_text())
    config['model_args']['attention_residual'] = True  # the weights' header says False
    (edited / 'config.json').write_text(json.dumps(config))
    own_cache = tmp_path / 'own-cache'  # create_model(..., cache_dir=): only there, not in the default cache
    _fill_hf_cache(own_cache, f'org/{NAME}.other', sorted(directory.iterdir()))
    _fill_hf_cache(own_cache, f'org/{NAME}.other-edited', sorted(edited.iterdir()))
    from huggingface_hub import try_to_load_from_cache
    assert try_to_load_from_cache(f'org/{NAME}.test', 'config.json', cache_dir=str(cache)) == \
        str(snapshot / 'config.json')
    torch.save((X, out), tmp_path / 'expected.pt')
    env = dict(os.environ, HF_HOME=str(tmp_path / 'hf'), HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE='1',
               HF_HUB_DISABLE_TELEMETRY='1', OMP_NUM_THREADS='1')
    env.pop('HF_TOKEN', None)
    # huggingface_hub reads HF_HUB_OFFLINE / HF_HUB_CACHE at import time: a fresh process
    result = subprocess.run(
        [sys.executable, '-c', _HF_CHILD, str(tmp_path / 'expected.pt'), str(own_cache)],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'HF-HUB-OK' in result.stdout
    assert 'MISSING-REPO' in result.stdout  # offline and not cached: an error, not a download
    assert 'OVERRIDE-REFUSED' in result.stdout and 'CONTRADICTION-REFUSED' in result.stdout
    assert 'CACHE-DIR-CONTRADICTION-REFUSED' in result.stdout


class _FakeHfApi:
    """ Stands in for huggingface_hub.HfApi: records the folder push_to_hub uploads. """
    uploads = []

    def __init__(self, token=None, library_name=None, library_version=None):
        self.library_name = library_name

    def create_repo(self, repo_id, private=False, exist_ok=False):
        class _Url:
            pass
        url = _Url()
        url.repo_id = repo_id
        return url

    def file_exists(self, repo_id, filename, revision=None):
        return False

    def upload_folder(self, repo_id, folder_path, revision=None, create_pr=False, commit_message=''):
        files = {p.name: p.read_bytes() for p in Path(folder_path).iterdir()}
        self.uploads.append(dict(repo_id=repo_id, files=files, commit_message=commit_message))
        return 'commit-info'


def test_push_to_hub_uploads_the_save_pretrained_layout(exported, monkeypatch):
    monkeypatch.setattr(hub, 'HfApi', _FakeHfApi)
    _FakeHfApi.uploads.clear()
    model, _, directory = exported
    result = hub.push_to_hub(
        model, f'org/{NAME}.test', commit_message='Add weights',
        model_card_extra=dict(dataset='cifar10', reported_accuracy=dict(top1=95.01, source='the uploader\'s log')),
    )
    assert result == 'commit-info' and len(_FakeHfApi.uploads) == 1
    upload = _FakeHfApi.uploads[0]
    assert upload['repo_id'] == f'org/{NAME}.test' and upload['commit_message'] == 'Add weights'
    assert sorted(upload['files']) == ['README.md', 'config.json', 'model.safetensors']
    assert json.loads(upload['files']['config.json']) == json.loads((directory / 'config.json').read_text())
    assert upload['files']['README.md'].decode() == (directory / 'README.md').read_text()
    # the same tensors and the same metadata (safetensors writes its metadata map in no fixed order, so not bytes)
    from safetensors.torch import load as load_bytes
    from timm_resattn.weights import read_weight_file
    pushed = load_bytes(upload['files']['model.safetensors'])
    saved, metadata = read_weight_file(directory / 'model.safetensors')
    assert pushed.keys() == saved.keys() and all(torch.equal(pushed[k], saved[k]) for k in saved)
    header = json.loads(upload['files']['model.safetensors'][8:8 + int.from_bytes(
        upload['files']['model.safetensors'][:8], 'little')])
    assert header['__metadata__'] == metadata == {'format': 'pt', **model.weights_metadata()}


def test_push_to_hub_refuses_a_model_before_creating_the_repo(monkeypatch):
    """ A model that can't be exported (here: pruned) is refused before any repository is created on the Hub. """
    from timm_resattn.errors import ExportError
    created = []

    class _RecordingHfApi(_FakeHfApi):
        def create_repo(self, repo_id, private=False, exist_ok=False):
            created.append(repo_id)
            return super().create_repo(repo_id, private=private, exist_ok=exist_ok)

    monkeypatch.setattr(hub, 'HfApi', _RecordingHfApi)
    _FakeHfApi.uploads.clear()
    pruned = timm.create_model(NAME)
    pruned.prune_intermediate_layers(indices=[1])
    with pytest.raises(ExportError, match='prune_intermediate_layers'):
        hub.push_to_hub(pruned, f'org/{NAME}.pruned')
    assert created == [] and _FakeHfApi.uploads == []
