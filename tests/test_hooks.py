"""The one hook holder (`cnntools.inference.hooks.Hooks`): what it records equals the layers'
own outputs and inputs, a backward hook changes the gradient, and every hook is gone after
the block, errors included."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnntools.inference.hooks import Hooks


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))


def _hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


def test_record_keeps_outputs_and_inputs_as_the_layers_compute_them():
    model = _model()
    x = torch.randn(2, 3, 8, 8)
    with Hooks() as hooks:
        outs = hooks.record(model, ["0", "3"])
        ins = hooks.record(model, ["3"], inputs=True)
        logits = model(x)
    conv = nn.functional.conv2d(x, model[0].weight, model[0].bias)
    # Cloned: the in-place ReLU after the conv did not overwrite the recorded pre-ReLU output.
    torch.testing.assert_close(outs["0"], conv)
    torch.testing.assert_close(outs["3"], logits.detach())
    torch.testing.assert_close(ins["3"], conv.clamp_min(0).flatten(1))
    assert _hook_count(model) == 0


def test_forward_hook_replaces_the_output_and_backward_hook_the_gradient():
    model = _model()
    model[1].inplace = False  # full backward hooks refuse in-place outputs (saliency turns it off likewise)
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    with Hooks() as hooks:
        hooks.forward(model[3], lambda _m, _a, out: out * 2)
        hooks.backward(model[1], lambda _m, grad_in, _grad_out: tuple(torch.zeros_like(g) for g in grad_in))
        out = model(x)
        (grad,) = torch.autograd.grad(out.sum(), x)
    plain = model(x.detach())
    torch.testing.assert_close(out.detach(), plain * 2)
    assert torch.count_nonzero(grad) == 0  # nothing passes back through the zeroed ReLU
    assert _hook_count(model) == 0


def test_hooks_are_removed_when_the_block_fails():
    model = _model()
    with pytest.raises(RuntimeError), Hooks() as hooks:
        hooks.record(model, ["0", "2"])
        hooks.forward_pre(model[0], lambda _m, _a: None)
        model(torch.randn(1, 5, 8, 8))  # wrong channel count
    assert _hook_count(model) == 0
