""" Memory-lean training (``memory_efficient=True``, ``timm_resattn.layers.memory``): the same forward outputs
(bit-identical), the same gradients and running stats as the plain path, and fewer saved activation bytes.
"""
import copy

import pytest
import timm
import torch
import torch.nn as nn

import timm_resattn  # noqa: F401
from benchmarks.activations import max_batch_for_budget, saved_activation_bytes
from helpers import narrow_kwargs, small_input_size
from timm_resattn.errors import ConfigError
from timm_resattn.layers import memory
from timm_resattn.layers.attention import create_max_pool
from timm_resattn.layers.memory import LeanMaxPool2d

ALL_MODELS = timm.list_models(module='resattnet')


def _pair(name, **kwargs):
    # one module per stage keeps the deep CIFAR nets fast
    narrow, size = narrow_kwargs(name, one_module_per_stage=True), small_input_size(name)
    torch.manual_seed(0)
    plain = timm.create_model(name, num_classes=10, **narrow, **kwargs).train()
    lean = copy.deepcopy(plain)
    lean.set_memory_efficient(True)
    return plain, lean, size


def _assert_same_training_step(plain, lean, x, seed=None):
    """ Returns the bytes each forward saved for backward (once per storage, parameters and buffers excluded). """
    outs, saved = [], []
    for m in (plain, lean):
        if seed is not None:
            torch.manual_seed(seed)
        storages = {}
        weights = {t.untyped_storage().data_ptr() for t in (*m.parameters(), *m.buffers())}

        def pack(t, storages=storages, weights=weights):
            if t.untyped_storage().data_ptr() not in weights:
                storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            outs.append(m(x))
        saved.append(sum(storages.values()))
    assert torch.equal(outs[0], outs[1])  # bit-identical forward
    g = torch.randn_like(outs[0])
    for o in outs:
        o.backward(g)
    lean_params = dict(lean.named_parameters())
    for n, p in plain.named_parameters():
        q = lean_params[n]
        assert (p.grad is None) == (q.grad is None), n
        if p.grad is not None:
            # identical on CPU in practice (same kernels, same summation order); fp32 rounding allowed
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-7, msg=lambda m, n=n: f'{n}: {m}')
    lean_buffers = dict(lean.named_buffers())
    for n, b in plain.named_buffers():
        assert torch.equal(lean_buffers[n], b), n  # running stats updated exactly once, identically
    return saved


@pytest.mark.parametrize('name', ALL_MODELS)
def test_same_outputs_gradients_and_running_stats(name, one_thread):
    plain, lean, size = _pair(name)
    saved_plain, saved_lean = _assert_same_training_step(plain, lean, torch.randn(2, *size))
    # the lean path really ran: the post-activation NeXt units have fewer BN-ReLU-conv pairs to thin out
    assert saved_lean < (0.85 if 'next' in name else 0.7) * saved_plain, (saved_plain, saved_lean)


def test_saved_bytes_reduction(one_thread):
    """ Deterministic (device-independent) accounting: at 64 px the lean (narrow) Attention-56 keeps < 55%. """
    narrow, size = narrow_kwargs('resattnet56'), small_input_size('resattnet56')
    torch.manual_seed(0)
    plain = timm.create_model('resattnet56', num_classes=10, **narrow).train()
    lean = timm.create_model('resattnet56', num_classes=10, memory_efficient=True, **narrow).train()
    x = torch.randn(1, *size)
    b_plain, b_lean = saved_activation_bytes(plain, x), saved_activation_bytes(lean, x)
    assert b_lean < 0.55 * b_plain, (b_plain, b_lean)
    # stage-level grad checkpointing composes: it cuts more, lean or not
    lean.set_grad_checkpointing(True)
    assert saved_activation_bytes(lean, x) < 0.5 * b_lean
    assert max_batch_for_budget(b_lean, 100 * b_lean) == 100
    assert max_batch_for_budget(b_lean, 100 * b_lean, fixed_bytes=b_lean) == 99


def test_eval_and_no_grad_take_the_plain_path(monkeypatch, one_thread):
    plain, lean, size = _pair('resattnet56')
    x = torch.randn(2, *size)

    def boom(*args, **kwargs):
        raise AssertionError('memory-lean function used outside training with grad')

    monkeypatch.setattr(memory._BnReluConvFn, 'apply', boom)
    monkeypatch.setattr(memory._LeanMaxPoolFn, 'apply', boom)
    with torch.no_grad():
        out = lean(x)  # training mode, no grad: plain path (running stats still update once, as in plain)
        assert torch.equal(out, plain(x))
    lean.eval()
    plain.eval()
    assert torch.equal(lean(x), plain(x))
    for n, b in plain.named_buffers():
        assert torch.equal(dict(lean.named_buffers())[n], b), n


def test_drop_path_same_seed(one_thread):
    plain, lean, size = _pair('resattnet56', drop_path_rate=0.3)
    _assert_same_training_step(plain, lean, torch.randn(2, *size), seed=7)


def test_grad_checkpointing_composes(one_thread):
    plain, lean, size = _pair('resattnext56')
    plain.set_grad_checkpointing(True)
    lean.set_grad_checkpointing(True)
    _assert_same_training_step(plain, lean, torch.randn(2, *size))


def test_features_only(one_thread):
    narrow, size = narrow_kwargs('resattnet56'), small_input_size('resattnet56')
    torch.manual_seed(0)
    plain = timm.create_model('resattnet56', features_only=True, **narrow).train()
    torch.manual_seed(0)
    lean = timm.create_model('resattnet56', features_only=True, memory_efficient=True, **narrow).train()
    assert any(isinstance(m, LeanMaxPool2d) for m in lean.modules())
    x = torch.randn(2, *size)
    fp, fl = plain(x), lean(x)
    for a, b in zip(fp, fl):
        assert torch.equal(a, b)
    sum(f.square().mean() for f in fp).backward()
    sum(f.square().mean() for f in fl).backward()
    for (n, p), (_, q) in zip(plain.named_parameters(), lean.named_parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-7, msg=lambda m, n=n: f'{n}: {m}')


def test_autocast_runs_plain_path(one_thread):
    plain, lean, size = _pair('resattnet56')
    x = torch.randn(2, *size)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        a, b = plain(x), lean(x)
    assert torch.equal(a, b)
    b.float().sum().backward()
    assert all(p.grad is not None for p in lean.parameters())


def test_switch_and_validation():
    model = timm.create_model('resattnet56_cifar', stage_chs=(32, 64, 128), memory_efficient=True)
    assert model.cfg.memory_efficient
    assert all(m.memory_efficient for m in model.modules() if hasattr(m, 'memory_efficient'))
    keys = set(model.state_dict())
    model.set_memory_efficient(False)
    assert not any(isinstance(m, LeanMaxPool2d) for m in model.modules())
    assert not any(getattr(m, 'memory_efficient', False) for m in model.modules())
    assert set(model.state_dict()) == keys
    assert set(timm.create_model('resattnet56_cifar', stage_chs=(32, 64, 128)).state_dict()) == keys
    with pytest.raises(ConfigError, match='memory_efficient'):
        timm.create_model('resattnet56_cifar', memory_efficient='yes')


@pytest.mark.parametrize('mode', ['caffe', 'torch'])
def test_lean_max_pool_is_exact(mode):
    ref = create_max_pool(mode)
    lean = LeanMaxPool2d(create_max_pool(mode)).train()
    for shape in [(2, 8, 56, 56), (1, 16, 57, 31), (1, 4, 2, 3), (2, 3, 9, 9)]:
        x = torch.randn(shape)
        x[:, :, ::2] = torch.relu(x[:, :, ::2])  # ties at zero, as after a ReLU
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        a, b = ref(xa), lean(xb)
        assert torch.equal(a, b)
        g = torch.randn_like(a)
        a.backward(g)
        b.backward(g)
        assert torch.equal(xa.grad, xb.grad)
    with pytest.raises(TypeError, match='dilation'):
        LeanMaxPool2d(nn.MaxPool2d(3, dilation=2))


def test_torchscript_fx_and_compile_with_the_switch_on(one_thread):
    """ The switch changes nothing for TorchScript (plain path), FX (traced as the plain path; the pools stay leaves)
    and dynamo (the plain path is captured as one graph; the AOT partitioner makes its own recompute choices).
    """
    import torch._dynamo
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

    # training-mode capture (the smallest net: dynamo's tracing time grows with depth)
    narrow, size = narrow_kwargs('resattnet56_cifar'), small_input_size('resattnet56_cifar')
    model = timm.create_model('resattnet56_cifar', memory_efficient=True, **narrow).train()
    torch._dynamo.reset()
    compiled = torch.compile(model, backend='eager', fullgraph=True)
    compiled(torch.randn(2, *size)).mean().backward()
    assert all(p.grad is not None for p in model.parameters())
    torch._dynamo.reset()


def test_ddp_single_process(tmp_path, one_thread):
    """ DDP's gradient hooks fire for parameters used inside the memory-lean autograd functions. """
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
    finally:
        dist.destroy_process_group()
