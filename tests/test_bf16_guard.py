"""CPU bf16 autocast: convolutions smaller than their kernel run in fp32 (oneDNN's bf16 weight
gradient writes NaN into their padding-only taps now and then; see cnntools.training.bf16_guard)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnntools.core import runtime
from cnntools.training.bf16_guard import guard_small_convs


def _net():
    # 8 px -> stride 2 four times: the last two 3x3 convs see 1x1 maps.
    layers, channels = [], 1
    for out in (8, 16, 16, 16):
        layers += [nn.Conv2d(channels, out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]
        channels = out
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(16, 3))


def test_only_convs_smaller_than_their_kernel_are_guarded_and_they_run_in_fp32():
    model = _net()
    convs = [m for m in model if isinstance(m, nn.Conv2d)]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert guard_small_convs(model, (1, 8, 8), "cpu", "fp32") == []
    guarded = guard_small_convs(model, (1, 8, 8), "cpu", "bf16")
    assert guarded == convs[2:]  # inputs 8, 4, 2 (2 < 3: guarded), 1
    assert model.training  # the probing pass left the mode and the running statistics alone
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    dtypes = {}
    for conv in convs:
        conv.register_forward_hook(lambda mod, _a, out: dtypes.__setitem__(mod, out.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(torch.randn(4, 1, 8, 8)).float().sum().backward()
    assert [dtypes[c] for c in convs] == [torch.bfloat16, torch.bfloat16, torch.float32, torch.float32]
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.skipif(not runtime.cpu_has_native_bf16(), reason="needs a CPU with native bf16 (AVX512-BF16/AMX)")
def test_bf16_gradients_of_a_deep_net_on_small_images_stay_finite():
    # Unguarded, about one seed in five gave a NaN gradient in layer4.0.conv1 (a 3x3 stride-2
    # conv on 1x1 maps) in this bare bf16 loop: 12 seeds miss it with probability < 0.07.
    timm = pytest.importorskip("timm", reason="timm is an optional extra")
    for seed in range(12):
        torch.manual_seed(seed)
        model = timm.create_model("test_resnet", num_classes=3, in_chans=1, drop_rate=0.1)
        assert len(guard_small_convs(model, (1, 16, 16), "cpu", "bf16")) >= 1
        model = model.to(memory_format=torch.channels_last) if seed % 2 else model
        x, y = torch.randn(40, 1, 16, 16), torch.randint(0, 3, (40,))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = nn.functional.cross_entropy(model(x).float(), y)
        loss.backward()
        bad = [n for n, p in model.named_parameters() if not torch.isfinite(p.grad).all()]
        assert not bad, f"seed {seed}: non-finite gradients in {bad}"
