"""cnntools' SGD/Adam/AdamW (training/optimizers.py) against torch.optim: the same parameters
step by step, the same schedules, state dicts that move both ways, and no torch._dynamo."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from cnntools.checkpoint.file_format import pack, unpack
from cnntools.training import optimizers

TIGHT = {"rtol": 1e-6, "atol": 1e-6}

# (name, ours, torch's, options): every combination cnntools can build, and some lrs.
CASES = [
    *[(f"sgd-lr{lr}-m{m}-n{n}-wd{wd}", optimizers.SGD, torch.optim.SGD,
       {"lr": lr, "momentum": m, "nesterov": n, "weight_decay": wd})
      for lr in (0.1, 0.01) for m in (0.0, 0.9) for n in (False, True) for wd in (0.0, 5e-4) if m or not n],
    *[(f"adam-lr{lr}-wd{wd}", optimizers.Adam, torch.optim.Adam, {"lr": lr, "weight_decay": wd})
      for lr in (1e-3, 3e-2) for wd in (0.0, 5e-4)],
    *[(f"adamw-lr{lr}-wd{wd}", optimizers.AdamW, torch.optim.AdamW, {"lr": lr, "weight_decay": wd})
      for lr in (1e-3, 3e-2) for wd in (0.0, 5e-4, 1e-2)],
]
IDS = [case[0] for case in CASES]


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 6, 3, bias=False), nn.Flatten(), nn.Linear(6 * 4 * 4, 10))


def pair(ours_cls, torch_cls, options):
    """Two identical nets, one with our optimizer and one with torch's."""
    a = small_net()
    b = copy.deepcopy(a)
    return a, ours_cls(a.parameters(), **options), b, torch_cls(b.parameters(), **options)


def set_gradients(models, step: int, late: bool = True) -> None:
    """The same random gradients on every model; with `late` the last bias has none for the
    first 3 steps (its state starts later: the mixed first-step path)."""
    gen = torch.Generator().manual_seed(1000 + step)
    grads = [torch.randn(p.shape, generator=gen) for p in models[0].parameters()]
    for model in models:
        params = list(model.parameters())
        for i, (p, g) in enumerate(zip(params, grads)):
            p.grad = None if (late and i == len(params) - 1 and step < 3) else g.clone()


def assert_same(a: nn.Module, opt_a, b: nn.Module, opt_b) -> None:
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, **TIGHT)
    sa, sb = opt_a.state_dict(), opt_b.state_dict()
    assert sa["state"].keys() == sb["state"].keys()
    for key, state in sa["state"].items():
        assert state.keys() == sb["state"][key].keys()
        for name, value in state.items():
            torch.testing.assert_close(value, sb["state"][key][name], **TIGHT)
            assert value.dtype == sb["state"][key][name].dtype and value.device == sb["state"][key][name].device


def run_steps(models_and_opts, steps: int, start: int = 0, schedulers=()) -> None:
    models = [m for m, _ in models_and_opts]
    for step in range(start, start + steps):
        set_gradients(models, step)
        for _, opt in models_and_opts:
            opt.step()
        for scheduler in schedulers:
            scheduler.step()


@pytest.mark.parametrize("foreach", [None, True, False], ids=["default", "foreach", "for-loop"])
@pytest.mark.parametrize("name,ours,theirs,options", CASES, ids=IDS)
def test_twenty_steps_match_torch_optim(name, ours, theirs, options, foreach):
    """The default (fused kernels on the CPU), foreach kernels (CUDA's default) and tensor by
    tensor (torch.optim's CPU default), each against torch.optim's default doing the same."""
    a, opt_a, b, opt_b = pair(ours, theirs, {**options, "foreach": foreach})
    assert isinstance(opt_a, torch.optim.Optimizer)
    assert opt_a.defaults == opt_b.defaults  # the same keys and values as torch's own
    run_steps([(a, opt_a), (b, opt_b)], 20)
    assert_same(a, opt_a, b, opt_b)
    moved = [not torch.equal(p, q) for p, q in zip(a.parameters(), small_net().parameters())]
    assert all(moved), "every parameter took steps"


FUSED_ON_CPU = optimizers._fused_on_cpu()


@pytest.mark.skipif(not FUSED_ON_CPU, reason="this torch has no fused CPU kernels (torch < 2.4)")
@pytest.mark.parametrize("name,ours,theirs,options", CASES, ids=IDS)
def test_the_cpu_default_is_torchs_fused_kernel(name, ours, theirs, options):
    """On the CPU the default step is torch.optim's `fused=True` step, bit for bit (torch's
    fused SGD has no path for a momentum that starts late, so every gradient is there)."""
    a = small_net()
    b = copy.deepcopy(a)
    opt_a, opt_b = ours(a.parameters(), **options), theirs(b.parameters(), **options, fused=True)  # ours: no kernel asked for
    assert optimizers._kernel(opt_a.param_groups[0], torch.device("cpu")) == "fused"
    for step in range(20):
        set_gradients([a, b], step, late=False)
        opt_a.step()
        opt_b.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


@pytest.mark.parametrize("foreach", [None, True, False], ids=["default", "foreach", "for-loop"])
@pytest.mark.parametrize("ours,options", [(optimizers.SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
                                          (optimizers.Adam, {"lr": 1e-2}), (optimizers.AdamW, {"lr": 1e-2})],
                         ids=["sgd", "adam", "adamw"])
def test_gradients_and_states_in_another_layout(ours, options, foreach):
    """A channels_last parameter with contiguous gradients (set by hand; backward matches the
    parameter's strides) and with its optimizer state stored contiguous (a resume file's
    layout): every kernel updates it as the same parameter in the plain layout. The fused
    kernels walk raw memory, so without the realignment the update lands on the wrong entries."""
    torch.manual_seed(0)
    start = torch.randn(8, 3, 3, 3)
    cl = start.clone().contiguous(memory_format=torch.channels_last).requires_grad_()
    plain = start.clone().requires_grad_()
    opt_cl = ours([cl], **options, foreach=foreach)
    opt_plain = ours([plain], **options, foreach=False)
    gen = torch.Generator().manual_seed(1)
    for step in range(6):
        if step == 3:  # the state as a resume file gives it back: contiguous
            for state in opt_cl.state.values():
                for key, value in state.items():
                    if value.dim() == 4:
                        state[key] = value.contiguous()
        grad = torch.randn(start.shape, generator=gen)
        cl.grad, plain.grad = grad.clone(), grad.clone()
        opt_cl.step()
        opt_plain.step()
    torch.testing.assert_close(cl, plain, **TIGHT)
    assert cl.is_contiguous(memory_format=torch.channels_last)


def test_strides_of_size_one_dimensions_cost_no_copy():
    """A gradient whose strides differ from its parameter's only where a dimension has size 1
    (pytorch/pytorch#106951: bmm's gradient of a (2, 1, 100) weight) lies in the same order in
    memory: it is used as it is, and the fused step equals the tensor-by-tensor one."""
    param = torch.randn(2, 1, 100)
    grad = torch.randn(2, 1, 100).as_strided((2, 1, 100), (100, 1, 1))
    assert grad.stride() != param.stride() and optimizers._strided_like(grad, param) is grad
    a, b = param.clone().requires_grad_(), param.clone().requires_grad_()
    opt_a, opt_b = optimizers.Adam([a], lr=1e-2), optimizers.Adam([b], lr=1e-2, foreach=False)
    for _ in range(3):
        a.grad, b.grad = grad.clone(), grad.clone()
        opt_a.step()
        opt_b.step()
    torch.testing.assert_close(a, b, **TIGHT)


@pytest.mark.parametrize("schedule", ["onecycle", "lambda"])
@pytest.mark.parametrize("name,ours,theirs,options", [CASES[IDS.index(i)] for i in (
    "sgd-lr0.1-m0.9-nTrue-wd0.0005", "sgd-lr0.1-m0.0-nFalse-wd0.0",
    "adam-lr0.03-wd0.0005", "adamw-lr0.03-wd0.01")], ids=["sgd-nesterov", "sgd-plain", "adam", "adamw"])
def test_schedules_step_the_same(schedule, name, ours, theirs, options):
    """OneCycleLR cycles momentum (SGD, even one built with momentum 0, as cnntools' onecycle
    does) or betas (Adam) in the param groups: ours follow."""
    a, opt_a, b, opt_b = pair(ours, theirs, options)

    def make(opt):
        if schedule == "onecycle":
            return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=options["lr"], total_steps=25, pct_start=0.3)
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5 ** (step // 5))

    sched_a, sched_b = make(opt_a), make(opt_b)
    for step in range(20):
        run_steps([(a, opt_a), (b, opt_b)], 1, start=step, schedulers=(sched_a, sched_b))
        for ga, gb in zip(opt_a.param_groups, opt_b.param_groups):
            assert {k: v for k, v in ga.items() if k != "params"} == {k: v for k, v in gb.items() if k != "params"}
    if schedule == "onecycle":
        key = "momentum" if "momentum" in options else "betas"
        assert opt_a.param_groups[0][key] != opt_a.defaults[key], "the schedule cycles it"
    assert_same(a, opt_a, b, opt_b)


def resume_round_trip(state: dict) -> dict:
    """The state as a cnntools resume file stores and reads it (tuples come back as lists)."""
    tensors: dict = {}
    return unpack(json.loads(json.dumps(pack(state, "_resume/optimizer", tensors))), tensors)


@pytest.mark.parametrize("direction", ["torch-to-ours", "ours-to-torch"])
@pytest.mark.parametrize("name,ours,theirs,options", [CASES[IDS.index(i)] for i in (
    "sgd-lr0.1-m0.9-nTrue-wd0.0005", "sgd-lr0.01-m0.9-nFalse-wd0.0", "adam-lr0.001-wd0.0005", "adamw-lr0.001-wd0.01")],
    ids=["sgd-nesterov", "sgd-momentum", "adam", "adamw"])
def test_state_dicts_move_both_ways(direction, name, ours, theirs, options):
    """A resume state written by torch.optim (older checkpoints) continues in ours exactly as
    in torch.optim, and ours continues in torch.optim: 5 steps, save, load, 10 more."""
    writer_cls, reader_cls = (theirs, ours) if direction == "torch-to-ours" else (ours, theirs)
    net = small_net()
    writer = writer_cls(net.parameters(), **options)
    run_steps([(net, writer)], 5)
    saved = resume_round_trip(writer.state_dict())
    # Fresh optimizers of both kinds (other settings on purpose: the state dict's win) on copies of the net.
    a, b = copy.deepcopy(net), copy.deepcopy(net)
    other = {**options, "lr": options["lr"] * 3}
    opt_a, opt_b = reader_cls(a.parameters(), **other), writer_cls(b.parameters(), **other)
    opt_a.load_state_dict(copy.deepcopy(saved))  # a copy each: loading keeps the tensors it is given
    opt_b.load_state_dict(copy.deepcopy(saved))
    assert sorted(opt_a.param_groups[0]) == sorted(opt_b.param_groups[0])
    for state in opt_a.state.values():
        if "step" in state:
            assert state["step"].dtype == torch.float32 and state["step"].shape == () and state["step"].device.type == "cpu"
    run_steps([(a, opt_a), (b, opt_b)], 10, start=5)
    assert_same(a, opt_a, b, opt_b)
    # And the run that never stopped agrees too.
    run_steps([(net, writer)], 10, start=5)
    for p, q in zip(net.parameters(), a.parameters()):
        torch.testing.assert_close(p, q, **TIGHT)


def test_state_dict_keys_are_torchs():
    for ours, theirs, options in ((optimizers.SGD, torch.optim.SGD, {"lr": 0.1, "momentum": 0.9}),
                                  (optimizers.Adam, torch.optim.Adam, {"lr": 0.1}),
                                  (optimizers.AdamW, torch.optim.AdamW, {"lr": 0.1})):
        a, opt_a, b, opt_b = pair(ours, theirs, options)
        run_steps([(a, opt_a), (b, opt_b)], 4)
        sa, sb = opt_a.state_dict(), opt_b.state_dict()
        assert sa["param_groups"] == sb["param_groups"]
        assert {k: sorted(v) for k, v in sa["state"].items()} == {k: sorted(v) for k, v in sb["state"].items()}


@pytest.mark.parametrize("enabled", [False, True])
def test_grad_scaler_steps_it(enabled):
    """train's loop: scaler.scale(loss).backward(); scaler.step(opt); scaler.update()."""
    a, opt_a, b, opt_b = pair(optimizers.Adam, torch.optim.Adam, {"lr": 1e-2, "weight_decay": 5e-4})
    x = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    y = torch.arange(8) % 10
    for model, opt in ((a, opt_a), (b, opt_b)):
        scaler = torch.amp.GradScaler("cpu", enabled=enabled)
        for _ in range(5):
            opt.zero_grad(set_to_none=True)
            scaler.scale(nn.functional.cross_entropy(model(x), y)).backward()
            scaler.step(opt)
            scaler.update()
    assert_same(a, opt_a, b, opt_b)


def test_unsupported_settings_are_refused():
    net = small_net()
    opt = optimizers.Adam(net.parameters())
    opt.param_groups[0]["amsgrad"] = True
    set_gradients([net], 5)
    with pytest.raises(NotImplementedError, match="amsgrad"):
        opt.step()


# --- no torch._dynamo, no sympy ------------------------------------------------------------

REPORT = """
import atexit, json, sys
def report():
    sys.__stderr__.write('DYNAMO=' + json.dumps(sorted(m for m in ('torch._dynamo', 'sympy') if m in sys.modules)) + '\\n')
atexit.register(report)
"""

LIBRARY = REPORT + """
import torch
from torch import nn
from cnntools.training import optimizers
for cls, lr in ((optimizers.SGD, 0.1), (optimizers.Adam, 1e-3), (optimizers.AdamW, 1e-3)):
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(72, 3))
    opt = cls(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=10)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    for _ in range(3):
        opt.zero_grad(set_to_none=True)
        scaler.scale(net(torch.randn(4, 1, 8, 8)).sum()).backward()
        scaler.step(opt)
        scaler.update()
        sched.step()
    opt.load_state_dict(opt.state_dict())
    opt.zero_grad(set_to_none=False)
"""

CLI = REPORT + """
sys.argv = ['cnntools'] + sys.argv[1:]
from cnntools.cli.app import main
main()
"""

FAST = ["--image-size", "8", "--device", "cpu", "--precision", "fp32", "--batch-size", "64", "--augment", "none"]


def dynamo_modules(script: str, args=(), cwd=None) -> list[str]:
    env = {**os.environ, "NO_COLOR": "1", "CNNTOOLS_DEBUG": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("DYNAMO=")]
    assert lines, proc.stderr[-3000:]
    return json.loads(lines[-1][len("DYNAMO="):])


def test_stepping_scheduling_and_state_dicts_never_import_dynamo():
    assert dynamo_modules(LIBRARY) == []


@pytest.mark.parametrize("command", [
    ["train", "--epochs", "1", "-q", *FAST],
    ["train", "--epochs", "1", "-q", "--opt", "sgd", *FAST],
    ["train", "--dry-run", *FAST],
    ["lr-find", "--steps", "20", *FAST],
], ids=["train-adam", "train-sgd", "dry-run", "lr-find"])
def test_commands_never_import_dynamo(command, tmp_path):
    assert dynamo_modules(CLI, command, cwd=tmp_path) == []
