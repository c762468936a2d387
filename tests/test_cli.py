""" ``timm-resattn list`` and ``timm-resattn classify``: the model table and single-image classification. """
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import timm
from timm_resattn.cli import main
from timm_resattn.analysis.summary import model_summary


def test_model_summary_counts():
    s = model_summary('resattnet92')
    assert s['params'] == 52_466_344
    assert abs(s['gmacs'] - 10.534) < 0.01
    assert s['input_size'] == (3, 224, 224) and s['test_input_size'] == (3, 320, 320)
    assert s['weights'] == []


def test_list_table(capsys):
    assert main(['list', '--filter', 'resattnet[59]?_cifar']) == 0  # two small nets: the table lists what matches
    out = capsys.readouterr().out
    names = timm.list_models('resattnet[59]?_cifar', module='resattnet')
    assert names == ['resattnet56_cifar', 'resattnet92_cifar']
    listed = [line.split()[0] for line in out.splitlines()[2:] if line.startswith('resatt')]
    assert listed == names
    assert '1,798,426' in out and 'none (architecture only)' in out
    assert main(['list', '--filter', 'nothing*']) == 2


@pytest.fixture(scope='module')
def image_and_checkpoint(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('cli')
    img = tmp / 'img.png'
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(img)
    ckpt = tmp / 'w.safetensors'
    torch.manual_seed(0)
    save_file(timm.create_model('resattnet56_cifar').state_dict(), str(ckpt))
    return img, ckpt


def test_classify_with_checkpoint(image_and_checkpoint, capsys):
    img, ckpt = image_and_checkpoint
    assert main(['classify', str(img), '--model', 'resattnet56_cifar', '--checkpoint', str(ckpt), '--topk', '3']) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert 'input (32, 32)' in lines[0]
    assert len(lines) == 4 and lines[1].startswith('1.')
    probs = [float(line.split('%')[0].split()[-1]) for line in lines[1:]]
    assert probs == sorted(probs, reverse=True)
    # the flags in their --flag=value form too
    assert main(['classify', str(img), '--model=resattnet56_cifar', f'--checkpoint={ckpt}', '--topk=3']) == 0
    assert capsys.readouterr().out.strip().splitlines() == lines


def test_classify_errors(image_and_checkpoint, tmp_path, capsys):
    img, _ = image_and_checkpoint
    assert main(['classify', str(tmp_path / 'missing.jpg'), '--model', 'resattnet56_cifar']) == 2
    bad = tmp_path / 'bad.jpg'
    bad.write_bytes(b'not an image')
    assert main(['classify', str(bad), '--model', 'resattnet56_cifar']) == 2
    assert main(['classify', str(img), '--model', 'resnet_nope']) == 2
    assert main(['classify', str(img), '--model', 'resattnet56_cifar', '--pretrained']) == 2
    err = capsys.readouterr().err
    assert 'image not found' in err and 'cannot read image' in err and 'unknown model' in err
    assert 'No pretrained weights exist' in err


@pytest.mark.subprocess
def test_module_entrypoint_runs():
    out = subprocess.run(
        [sys.executable, '-m', 'timm_resattn', 'list', '--filter', 'resattnet56_cifar'],
        capture_output=True, text=True, check=True,
    ).stdout
    assert 'resattnet56_cifar' in out and '1,068,186' in out


@pytest.mark.parametrize('argv, inputs, outputs', [
    (['classify', 'a.png', '--checkpoint', 'w.pth'], {'a.png', 'w.pth'}, set()),
    (['visualize', 'a.png', 'b.png', '--model', 'm', '--checkpoint', 'w.pth', '--out', 'o.png', '--responses', 'r.png'],
     {'a.png', 'b.png', 'w.pth'}, {'o.png', 'r.png'}),
    (['export', 'onnx', 'o.onnx', '--model', 'm', '--checkpoint', 'w.pth'], {'w.pth'}, {'o.onnx'}),
    (['convert', 'caffe', 'in.caffemodel', 'o.safetensors', '--model', 'm'], {'in.caffemodel'}, {'o.safetensors'}),
    (['run', 'script.py', '--out', 'x'], {'script.py'}, set()),  # the script's own flags are its business
    (['train-cifar', '--data-dir', 'd', '--out', 'r', '--resume', 'l.pth.tar', '--dataset', 'cifar100'],
     {'d/cifar-100-python/train', 'd/cifar-100-python/test', 'd/cifar-100-python/meta', 'l.pth.tar'},
     {'r/last.pth.tar', 'r/model_best.pth.tar', 'r/model_best.safetensors', 'r/summary.json'}),
])
def test_every_command_declares_the_files_it_reads_and_writes(argv, inputs, outputs):
    """ The guard sees every path-valued argument, declared where the argument is (issue 17). """
    import os

    from timm_resattn.cli import build_parser
    args = build_parser().parse_args(argv)
    declared_in = {os.path.normpath(u.path) for fn in args._path_inputs for u in fn(args)}
    declared_out = {os.path.normpath(u.path) for fn in args._path_outputs for u in fn(args)}
    assert declared_in == {os.path.normpath(p) for p in inputs}
    assert declared_out == {os.path.normpath(p) for p in outputs}
