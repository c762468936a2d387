""" Memory-lean training (``memory_efficient=True``, ``timm_resattn.layers.memory``: selective activation
checkpointing of each stage block): the same forward outputs (bit-identical), the same gradients and running stats
as the plain path, in fp32 and under autocast, and fewer bytes kept for backward (checkpoint caches included).
"""
import copy

import pytest
import timm
import torch

import timm_resattn  # noqa: F401
from benchmarks.activations import (
    activation_markdown, forward_and_saved_bytes, max_batch_for_budget, saved_activation_bytes,
)
from helpers import narrow_kwargs, small_input_size
from timm_resattn.errors import ConfigError
from timm_resattn.layers import memory
from timm_resattn.layers.memory import MemoryLeanSequential

ALL_MODELS = timm.list_models(module='resattnet')


def _pair(name, **kwargs):
    # one module per stage keeps the deep CIFAR nets fast
    narrow, size = narrow_kwargs(name, one_module_per_stage=True), small_input_size(name)
    torch.manual_seed(0)
    plain = timm.create_model(name, num_classes=10, **narrow, **kwargs).train()
    lean = copy.deepcopy(plain)
    lean.set_memory_efficient(True)
    return plain, lean, size


def _assert_same_training_step(plain, lean, x, precision='fp32', seed=None, channels_last=False):
    """ One forward + backward of each: bit-identical outputs, equal gradients, running stats and
    ``num_batches_tracked`` (updated once, identically). Returns the bytes each forward kept for backward. """
    outs, kept = [], []
    tracked0 = [int(b) for n, b in lean.named_buffers() if n.endswith('num_batches_tracked')]
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    for m in (plain, lean):
        if seed is not None:
            torch.manual_seed(seed)
        out, nbytes = forward_and_saved_bytes(m, x, precision)
        outs.append(out)
        kept.append(nbytes)
    assert outs[0].dtype == outs[1].dtype
    assert torch.equal(outs[0], outs[1])  # bit-identical forward
    g = torch.randn_like(outs[0])
    for o in outs:
        o.backward(g)
    lean_params = dict(lean.named_parameters())
    for n, p in plain.named_parameters():
        q = lean_params[n]
        assert (p.grad is None) == (q.grad is None), n
        if p.grad is not None:
            # the recompute is bit-identical and the backward runs the same kernels: equal in practice; allow rounding
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-7, msg=lambda m, n=n: f'{n}: {m}')
    lean_buffers = dict(lean.named_buffers())
    for n, b in plain.named_buffers():
        assert torch.equal(lean_buffers[n], b), n  # running stats and num_batches_tracked: once, identically
    tracked = [int(b) for n, b in lean.named_buffers() if n.endswith('num_batches_tracked')]
    assert tracked and all(b - b0 == 1 for b, b0 in zip(tracked, tracked0))  # once, not again in backward
    return kept


@pytest.mark.parametrize('precision', ['fp32', 'bf16'])
@pytest.mark.parametrize('name', ALL_MODELS)
def test_same_outputs_gradients_and_running_stats(name, precision, one_thread):
    plain, lean, size = _pair(name)
    kept_plain, kept_lean = _assert_same_training_step(plain, lean, torch.randn(2, *size), precision)
    # the lean path really ran and kept less (0.37-0.62 of the plain bytes for these narrow nets at these sizes)
    assert kept_lean < 0.7 * kept_plain, (kept_plain, kept_lean)


def test_fp16_autocast_and_channels_last(one_thread):
    plain, lean, size = _pair('resattnet56')
    kept_plain, kept_lean = _assert_same_training_step(plain, lean, torch.randn(2, *size), 'fp16')
    assert kept_lean < 0.8 * kept_plain, (kept_plain, kept_lean)
    plain, lean, size = _pair('resattnext56')
    plain.to(memory_format=torch.channels_last)
    lean.to(memory_format=torch.channels_last)
    kept_plain, kept_lean = _assert_same_training_step(
        plain, lean, torch.randn(2, *size), 'bf16', channels_last=True)
    assert kept_lean < 0.8 * kept_plain, (kept_plain, kept_lean)


def test_saved_bytes_reduction(one_thread):
    """ At 64 px the lean (narrow) Attention-56 keeps under 70% of the plain bytes in fp32, under 55% in bf16. """
    narrow, size = narrow_kwargs('resattnet56'), small_input_size('resattnet56')
    torch.manual_seed(0)
    plain = timm.create_model('resattnet56', num_classes=10, **narrow).train()
    lean = timm.create_model('resattnet56', num_classes=10, memory_efficient=True, **narrow).train()
    x = torch.randn(1, *size)
    for precision, limit in (('fp32', 0.7), ('bf16', 0.55)):
        b_plain, b_lean = saved_activation_bytes(plain, x, precision), saved_activation_bytes(lean, x, precision)
        assert b_lean < limit * b_plain, (precision, b_plain, b_lean)
    assert max_batch_for_budget(b_lean, 100 * b_lean) == 100
    assert max_batch_for_budget(b_lean, 100 * b_lean, fixed_bytes=b_lean) == 99


def test_a_stage_left_plain(one_thread):
    """ Each stage's ``memory_efficient`` attribute switches it alone (``benchmarks.common.lean_except``): with
    stage 0 left plain the step is still the plain model's, and the bytes kept lie strictly between plain's and
    all-lean's (stage 0 keeps what plain keeps, the others what lean keeps). """
    from benchmarks.common import lean_except
    plain, lean, size = _pair('resattnet56')
    x = torch.randn(2, *size)
    kept_all_lean = saved_activation_bytes(lean, x)
    partial = lean_except(copy.deepcopy(plain), [0])
    assert [s.memory_efficient for s in partial.stages] == [False, True, True, True]
    kept_plain, kept_partial = _assert_same_training_step(plain, partial, x)
    assert kept_all_lean < kept_partial < kept_plain, (kept_all_lean, kept_partial, kept_plain)
    with pytest.raises(ValueError, match='--plain-stages 4: ResidualAttentionNet has stages 0..3'):
        lean_except(partial, [4])


def test_grad_checkpointing_wins(monkeypatch, one_thread):
    """ With both switches on, the blocks are checkpointed whole (keeping only their inputs): the selective
    checkpoint is not used, the kept bytes are grad checkpointing's, and outputs, gradients and BN statistics
    (updated once: the recompute does not update them again) are the plain model's. """
    plain, lean, size = _pair('resattnext56')
    x = torch.randn(2, *size)
    ckpt = copy.deepcopy(plain)
    ckpt.set_grad_checkpointing(True)
    lean.set_grad_checkpointing(True)
    kept_ckpt = saved_activation_bytes(ckpt, x)
    assert saved_activation_bytes(lean, x) == kept_ckpt < 0.5 * saved_activation_bytes(plain, x)
    calls = []
    checkpoint_lean = memory.checkpoint_lean
    monkeypatch.setattr(
        memory, 'checkpoint_lean', lambda m, x, selective=True: (calls.append(selective), checkpoint_lean(m, x))[1])
    _assert_same_training_step(plain, lean, x)
    assert calls and not any(calls)  # whole blocks only
    del calls[:]
    lean.set_grad_checkpointing(False)
    lean(x)
    assert calls and all(calls)  # the selective checkpoint again


@pytest.mark.parametrize('switch', ['memory_efficient', 'grad_checkpointing'])
def test_mode_change_between_forward_and_backward(switch, one_thread):
    """ ``model.eval()`` (as a validation hook might call) between the forward and the backward: the recompute runs
    in the forward's modes, so the step is still the plain model's (torch's checkpoint would otherwise recompute BN
    in eval mode and refuse the different tensors). Also with a stage put back in training mode. """
    plain, lean, size = _pair('resattnet56')
    if switch == 'grad_checkpointing':
        lean.set_memory_efficient(False)
        lean.set_grad_checkpointing(True)
    x = torch.randn(2, *size)
    outs = [m(x) for m in (plain, lean)]
    for m in (plain, lean):
        m.eval()
        m.stages[1].train()
    g = torch.randn_like(outs[0])
    for o in outs:
        o.backward(g)
    grads = {n: p.grad for n, p in lean.named_parameters()}
    for n, p in plain.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, rtol=1e-5, atol=1e-7, msg=lambda m, n=n: f'{n}: {m}')
    assert not lean.training and lean.stages[1].training and not lean.stages[0].training  # modes left as set


def test_eval_and_no_grad_take_the_plain_path(monkeypatch, one_thread):
    plain, lean, size = _pair('resattnet56')
    x = torch.randn(2, *size)

    def boom(*args, **kwargs):
        raise AssertionError('selective checkpoint used outside training with grad')

    monkeypatch.setattr(memory, 'checkpoint', boom)
    with torch.no_grad():
        out = lean(x)  # training mode, no grad: plain path (running stats still update once, as in plain)
        assert torch.equal(out, plain(x))
    lean.eval()
    plain.eval()
    assert torch.equal(lean(x), plain(x))
    for n, b in plain.named_buffers():
        assert torch.equal(dict(lean.named_buffers())[n], b), n
    lean.train()
    with pytest.raises(AssertionError, match='selective checkpoint'):
        lean(x)



def test_frozen_stages_take_the_plain_path(monkeypatch, one_thread):
    # a frozen stage on an input that needs no grad has nothing to save: no checkpoint; the stages after a trainable
    # one (their input needs grad) and trainable stages still take the lean path
    plain, lean, size = _pair('resattnet56')
    x = torch.randn(2, *size)
    calls = []
    real_checkpoint = memory.checkpoint

    def counting(fn, *args, **kwargs):
        calls.append(fn)
        return real_checkpoint(fn, *args, **kwargs)

    monkeypatch.setattr(memory, 'checkpoint', counting)
    for m in (plain, lean):
        m.stem.requires_grad_(False)
        m.stages[0].requires_grad_(False)
    _assert_same_training_step(plain, lean, x)
    first = set(lean.stages[0].children())
    assert calls and not first & set(calls)  # stage 0 ran plain
    assert set(lean.stages[1].children()) <= set(calls)  # its output needs no grad, but stage 1 trains
    calls.clear()
    lean.requires_grad_(False)
    lean(x).sum()
    assert calls == []  # a frozen net: no checkpoint at all


def test_one_backward_per_forward_with_the_switch_on(one_thread):
    # torch's selective checkpoint refuses a second backward through one graph (the module docstring says so);
    # the plain model and set_grad_checkpointing allow it
    plain, lean, size = _pair('resattnet56')
    x = torch.randn(2, *size)
    out = plain(x).sum()
    out.backward(retain_graph=True)
    out.backward()
    out = lean(x).sum()
    out.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match='backward an extra time'):
        out.backward()
    lean.set_grad_checkpointing(True)
    out = lean(x).sum()
    out.backward(retain_graph=True)
    out.backward()


def test_set_memory_efficient_takes_bools_only():
    model = timm.create_model('resattnet56_cifar', stage_chs=(32, 64, 128))
    for bad in ('false', 'yes', 2, None):
        with pytest.raises(ConfigError, match='enable='):
            memory.set_memory_efficient(model, bad)
        with pytest.raises(ConfigError, match='enable='):
            model.set_memory_efficient(bad)
    assert not any(m.memory_efficient for m in model.modules() if isinstance(m, MemoryLeanSequential))
    assert not model.cfg.memory_efficient
    memory.set_memory_efficient(model, True)
    assert all(m.memory_efficient for m in model.modules() if isinstance(m, MemoryLeanSequential))

def test_drop_path_same_seed(one_thread):
    plain, lean, size = _pair('resattnet56', drop_path_rate=0.3)
    _assert_same_training_step(plain, lean, torch.randn(2, *size), seed=7)


def test_features_only(one_thread):
    """ timm's feature wrapper calls the stages, which checkpoint their blocks: the lean path engages there too. """
    narrow, size = narrow_kwargs('resattnet56'), small_input_size('resattnet56')
    torch.manual_seed(0)
    plain = timm.create_model('resattnet56', features_only=True, **narrow).train()
    torch.manual_seed(0)
    lean = timm.create_model('resattnet56', features_only=True, memory_efficient=True, **narrow).train()
    assert sum(m.memory_efficient for m in lean.modules() if isinstance(m, MemoryLeanSequential)) == 4
    x = torch.randn(2, *size)

    class Loss(torch.nn.Module):  # saved_activation_bytes measures a tensor output
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return sum(f.square().mean() for f in self.m(x))

    assert saved_activation_bytes(Loss(lean), x) < 0.8 * saved_activation_bytes(Loss(plain), x)

    def same_step():  # equal features and gradients from one training step of each
        fp, fl = plain(x), lean(x)
        for a, b in zip(fp, fl):
            assert torch.equal(a, b)
        sum(f.square().mean() for f in fp).backward()
        sum(f.square().mean() for f in fl).backward()
        for (n, p), (_, q) in zip(plain.named_parameters(), lean.named_parameters()):
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-7, msg=lambda m, n=n: f'{n}: {m}')

    same_step()
    for (n, b), (_, c) in zip(plain.named_buffers(), lean.named_buffers()):
        assert torch.equal(b, c), n
    # the wrapper's own grad checkpointing (whole stages, timm's) nests the selective checkpoints: same step
    plain.set_grad_checkpointing(True)
    lean.set_grad_checkpointing(True)
    same_step()


def test_sync_batchnorm(one_thread):
    """ Nothing depends on the BN class: timm's ``convert_sync_batchnorm`` (single process, no process group: the
    SyncBN layers run as plain BN) gives the same step, stats updated once, and the saving. """
    plain, lean, size = _pair('resattnet56')
    plain = timm.layers.convert_sync_batchnorm(plain)
    lean = timm.layers.convert_sync_batchnorm(lean)
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in lean.modules())
    kept_plain, kept_lean = _assert_same_training_step(plain, lean, torch.randn(2, *size), 'bf16')
    assert kept_lean < 0.8 * kept_plain


def test_switch_and_validation():
    model = timm.create_model('resattnet56_cifar', stage_chs=(32, 64, 128), memory_efficient=True)
    assert model.cfg.memory_efficient
    stages = [m for m in model.modules() if isinstance(m, MemoryLeanSequential)]
    assert len(stages) == 3 and all(m.memory_efficient for m in stages)
    keys = set(model.state_dict())
    model.set_memory_efficient(False)
    assert not model.cfg.memory_efficient
    assert not any(m.memory_efficient for m in stages)
    assert set(model.state_dict()) == keys
    assert set(timm.create_model('resattnet56_cifar', stage_chs=(32, 64, 128)).state_dict()) == keys
    with pytest.raises(ConfigError, match='memory_efficient'):
        timm.create_model('resattnet56_cifar', memory_efficient='yes')


def test_no_private_aten_ops():
    import pathlib
    root = pathlib.Path(timm_resattn.__file__).parent
    offenders = [str(p) for p in root.rglob('*.py') if 'torch.ops.aten._' in p.read_text()]
    assert not offenders


def test_benchmark_rows_say_their_precision():
    rows = [
        dict(model='m', variant=v, precision=p, img_size=64, batch_size=2, saved_mib_per_img=1.0, budget_gib=1,
             max_batch_in_budget=3)
        for p in ('fp32', 'bf16') for v in ('plain', 'lean')
    ]
    text = '\n'.join(activation_markdown(rows))
    assert 'fp32, 64x64' in text and 'bf16 autocast' in text and text.count('| `m` |') == 2


def test_torchscript_fx_with_the_switch_on(one_thread):
    """ The switch changes nothing for TorchScript and FX (both see the plain path). """
    from torchvision.models.feature_extraction import create_feature_extractor
    from timm.layers import get_notrace_functions, get_notrace_modules

    narrow, size = narrow_kwargs('resattnet56'), small_input_size('resattnet56')
    x = torch.randn(2, *size)
    with timm.layers.set_layer_config(scriptable=True):
        model = timm.create_model('resattnet56', num_classes=10, memory_efficient=True, **narrow).eval()
    scripted = torch.jit.script(model)
    with torch.no_grad():
        assert torch.equal(scripted(x), model(x))

    model.train()
    fx_model = create_feature_extractor(
        model, return_nodes=['head.fc'],
        tracer_kwargs={
            'leaf_modules': list(get_notrace_modules()), 'autowrap_functions': list(get_notrace_functions())},
    )
    fx_model.train()
    out = fx_model(x)['head.fc']
    out.mean().backward()
    assert all(p.grad is not None for p in fx_model.parameters())


def test_compile(one_thread):
    """ Under torch.compile (AOT autograd's partitioner, eager kernels) the selective checkpoint is traced and
    honoured: the compiled lean model keeps less than the compiled plain model (measured in the step after the
    compiling one), matches it, and updates the BN statistics once per step (not again in backward). A small net:
    compiling on CPU is slow. """
    import torch._dynamo

    torch.manual_seed(0)
    plain = timm.create_model(
        'resattnet56_cifar', **narrow_kwargs('resattnet56_cifar'), stage_modules=(1, 0, 0)).train()
    lean = copy.deepcopy(plain)
    lean.set_memory_efficient(True)
    x = torch.randn(2, *small_input_size('resattnet56_cifar'))
    torch._dynamo.reset()
    try:
        c_plain, c_lean = (torch.compile(m, backend='aot_eager', fullgraph=True) for m in (plain, lean))
        for compiled in (c_plain, c_lean):  # compile first: what compilation leaves allocated is not the step's
            compiled(x).sum().backward()
        out_plain, kept_plain = forward_and_saved_bytes(c_plain, x)
        out_lean, kept_lean = forward_and_saved_bytes(c_lean, x)
        assert kept_lean < 0.7 * kept_plain, (kept_plain, kept_lean)
        torch.testing.assert_close(out_lean, out_plain, rtol=1e-6, atol=1e-6)
        g = torch.randn_like(out_plain)
        out_plain.backward(g)
        out_lean.backward(g)
    finally:
        torch._dynamo.reset()
    for (n, p), (_, q) in zip(plain.named_parameters(), lean.named_parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-7, msg=lambda m, n=n: f'{n}: {m}')
    for (n, b), (_, c) in zip(plain.named_buffers(), lean.named_buffers()):
        torch.testing.assert_close(c, b, rtol=1e-6, atol=1e-7, msg=lambda m, n=n: f'{n}: {m}')
        if n.endswith('num_batches_tracked'):
            assert int(c) == 2, n  # once per forward (the compiling step and the measured one), not in backward


def test_ddp_single_process(tmp_path, one_thread):
    """ DDP's gradient hooks fire for parameters used inside the selective checkpoints. """
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    plain, lean, size = _pair('resattnet56_cifar')
    dist.init_process_group('gloo', init_method=f'file://{tmp_path}/pg', rank=0, world_size=1)
    try:
        ddp = DDP(lean)
        x = torch.randn(2, *size)
        out_ddp, out_plain = ddp(x), plain(x)
        assert torch.equal(out_ddp, out_plain)
        out_ddp.sum().backward()
        out_plain.sum().backward()
        for (n, p), (_, q) in zip(plain.named_parameters(), lean.named_parameters()):
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-7, msg=lambda m, n=n: f'{n}: {m}')
        for (n, b), (_, c) in zip(plain.named_buffers(), lean.named_buffers()):
            assert torch.equal(b, c), n
    finally:
        dist.destroy_process_group()
