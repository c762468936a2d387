""" Tests of the mask visualisation command ``timm-resattn visualize``. """
import os
import runpy
import sys
import warnings

import pytest
import torch
from PIL import Image

import timm
from helpers import NARROW_IMAGENET
from timm_resattn.analysis.masks import MaskRecord
from timm_resattn.cli import main
from timm_resattn.analysis.figures import (
    CHART_H, CHART_MARGIN_X, CHART_SLOT_W, HEADER_H, MIN_TILE, PAD, TITLE_H, jet, mask_grid, response_chart, tile_scale,
)

SIZE = 32  # --img-size for the command: resattnet56 takes >= 31; small keeps the tests fast
# NARROW_IMAGENET on the command line, for the runs that do not need the real widths
NARROW_ARGV = ['--model-kwargs', 'stem_chs=16', 'stage_chs=(32,64,128,256)']


def _expected_grid(rows: int, modules: int, channels: int, side: int):
    side *= tile_scale(side, side)  # crops under MIN_TILE are enlarged
    cols = 1 + modules * (1 + channels)
    return PAD + cols * (side + PAD), HEADER_H + rows * (TITLE_H + side + PAD)


@pytest.fixture(scope='module')
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp('images')
    g = torch.Generator().manual_seed(0)
    paths = []
    for name, (w, h) in (('a.jpg', (80, 60)), ('b.png', (50, 90))):
        data = torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8)
        path = d / name
        Image.frombytes('RGB', (w, h), data.numpy().tobytes()).save(path)
        paths.append(str(path))
    return paths


def test_jet():
    ends = jet(torch.tensor([0., 0.5, 1.]))
    torch.testing.assert_close(ends, torch.tensor([[0., 0., .5], [.5, 1., .5], [.5, 0., 0.]]))
    assert jet(torch.rand(5, 7)).shape == (5, 7, 3)


def test_mask_grid_and_chart_layout():
    images = torch.rand(2, 3, 20, 24)
    records = [
        MaskRecord('stages.0.1', 0, torch.rand(2, 8, 5, 6)),
        MaskRecord('stages.1.1', 1, torch.rand(2, 16, 3, 3)),
    ]
    grid = mask_grid(images, records, channels=[1, 7], scale='fixed', header='test')
    k = tile_scale(20, 24)  # a 20 px crop is enlarged to at least MIN_TILE
    assert k * 20 >= MIN_TILE > (k - 1) * 20
    assert grid.size == (PAD + 7 * (24 * k + PAD), HEADER_H + 2 * (TITLE_H + 20 * k + PAD))
    assert tile_scale(224, 224) == 1
    with pytest.raises(ValueError, match='out of range'):
        mask_grid(images, records, channels=[8])
    chart = response_chart({'stages.0': 1.0, 'stages.1': 0.25, 'stages.2': 0.0})
    assert chart.size == (2 * CHART_MARGIN_X + 3 * CHART_SLOT_W, CHART_H)


def test_main_untrained(images, tmp_path, capsys):
    out, out2 = tmp_path / 'masks.png', tmp_path / 'sub' / 'responses.png'
    out2.parent.mkdir()  # output folders must exist (a missing one is an error, see test_output_folder_must_exist)
    argv = images + ['--model', 'resattnet56', '--img-size', str(SIZE), '--out', str(out), '--channels', '0,3',
                     '--responses', str(out2)]
    assert main(['visualize', *argv]) == 0
    captured = capsys.readouterr()
    assert 'warning' in captured.err and 'meaningless' in captured.err
    with Image.open(out) as im:
        assert im.format == 'PNG' and im.mode == 'RGB'
        assert im.size == _expected_grid(rows=2, modules=3, channels=2, side=SIZE)
        # the input tile of the first row holds the (random, hence non-uniform) image
        side = SIZE * tile_scale(SIZE, SIZE)
        tile = im.crop((PAD, HEADER_H + TITLE_H, PAD + side, HEADER_H + TITLE_H + side))
        assert len(set(tile.tobytes())) > 100
    with Image.open(out2) as im:
        assert im.size == (2 * CHART_MARGIN_X + 4 * CHART_SLOT_W, CHART_H)  # resattnet56 has 4 stages
    w, h = _expected_grid(rows=2, modules=3, channels=2, side=SIZE)
    assert f'wrote {out} ({w}x{h} px' in captured.out
    assert str(out2) in captured.out


def test_main_checkpoint(images, tmp_path, capsys):
    from safetensors.torch import save_file
    ckpt = tmp_path / 'w.safetensors'
    save_file(timm.create_model('resattnet56', **NARROW_IMAGENET).state_dict(), str(ckpt))
    out = tmp_path / 'masks.png'
    argv = images[:1] + ['--model', 'resattnet56', '--checkpoint', str(ckpt), '--img-size', str(SIZE),
                         '--out', str(out)] + NARROW_ARGV
    assert main(['visualize', *argv]) == 0
    assert 'meaningless' not in capsys.readouterr().err
    with Image.open(out) as im:
        assert im.size == _expected_grid(rows=1, modules=3, channels=0, side=SIZE)


def _fails(argv, capsys, *needles):
    assert main(['visualize', *argv]) == 2
    err = capsys.readouterr().err
    assert 'Traceback' not in err
    for needle in needles:
        assert needle in err
    return err


def test_exit_code_missing_image(tmp_path, capsys):
    _fails([str(tmp_path / 'nope.jpg'), '--model', 'resattnet56', '--out', str(tmp_path / 'o.png')],
           capsys, 'image not found')
    assert not (tmp_path / 'o.png').exists()


def test_exit_code_unreadable_image(tmp_path, capsys):
    bad = tmp_path / 'x.jpg'
    bad.write_bytes(os.urandom(256))
    _fails([str(bad), '--model', 'resattnet56', '--out', str(tmp_path / 'o.png')], capsys, 'cannot read image')


def test_exit_code_unknown_model(images, tmp_path, capsys):
    _fails(images + ['--model', 'resattnet1000', '--out', str(tmp_path / 'o.png')], capsys,
           'unknown model', 'resattnet56', 'resattnext92')


def test_exit_code_pretrained_missing(images, tmp_path, capsys):
    _fails(images + ['--model', 'resattnet56', '--pretrained', '--out', str(tmp_path / 'o.png')], capsys,
           'pretrained')


def test_exit_code_checkpoint_problems(images, tmp_path, capsys):
    _fails(images + ['--model', 'resattnet56', '--checkpoint', str(tmp_path / 'no.pth'), '--out', 'o.png'],
           capsys, 'checkpoint not found')
    junk = tmp_path / 'junk.pth'
    junk.write_bytes(b'not a checkpoint')
    _fails(images + ['--model', 'resattnet56', '--checkpoint', str(junk), '--out', 'o.png'],
           capsys, 'cannot load checkpoint')


def test_exit_code_bad_arguments(images, tmp_path, capsys):
    _fails(images + ['--model', 'resattnet56', '--channels', 'a,b', '--out', 'o.png'], capsys, '--channels')
    _fails(images + ['--model', 'resattnet56', '--pretrained', '--checkpoint', 'w.pth', '--out', 'o.png'], capsys)
    _fails(images[:1] + ['--model', 'resattnet56', '--img-size', str(SIZE), '--channels', '40',
                         '--out', str(tmp_path / 'o.png')] + NARROW_ARGV, capsys, 'out of range')
    _fails(images + ['--model', 'resattnet56', '--model-kwargs', 'no_such_field=1', '--out', 'o.png'], capsys,
           'no_such_field')


def test_module_entry_point(tmp_path, monkeypatch, capsys):
    """ ``python -m timm_resattn visualize`` exits with main()'s code; user errors print no traceback.

    Run in-process with runpy (a subprocess would spend most of the test budget importing torch and timm).
    """
    monkeypatch.setattr(sys, 'argv', ['timm_resattn', 'visualize', str(tmp_path / 'missing.jpg'),
                                      '--model', 'resattnet56', '--out', str(tmp_path / 'o.png')])
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', RuntimeWarning)  # "found in sys.modules" (the tests imported it)
        with pytest.raises(SystemExit) as exc:
            runpy.run_module('timm_resattn', run_name='__main__')
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert 'image not found' in err and 'Traceback' not in err
