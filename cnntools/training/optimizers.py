"""SGD, Adam and AdamW with torch.optim's update math, minus torch.optim's torch.compile hooks.

Why cnntools carries its own step (issue 29): torch.optim's `step` is wrapped so that it
imports `torch._dynamo` (and with it sympy) and calls `graph_break()` on every call, and
`add_param_group`, `zero_grad`, `state_dict` and `load_state_dict` are decorated with
`torch._disable_dynamo`, which imports `torch._dynamo` on first use. cnntools never compiles,
yet that import cost every `train` run about as much as `import torch` itself.

The classes here stay `torch.optim.Optimizer` subclasses (the LR schedulers and GradScaler
check that), call the base class's methods without their dynamo decorator (`__wrapped__`),
keep torch's param_group keys (so resume states move both ways between them and
torch.optim.SGD/Adam/AdamW) and do each update with the operations, in the order, of
torch's own implementation, so parameters agree with torch.optim's to float rounding.

Which kernels: on the CPU, torch's fused kernels where the installed torch has them
(torch >= 2.4), the same `torch._fused_adam_`/`_fused_sgd_` calls as torch.optim's
`fused=True`: one multi-threaded, vectorised pass over all parameters instead of ~8 small
operators per tensor. Measured on simple-cnn (620k parameters, 2 cores): Adam 0.35 ms a step
against 1.9 ms tensor by tensor (torch.optim's CPU default) and 0.9 ms with foreach kernels
(`tests/benchmarks/bench_optimizers.py`). On CUDA/XPU foreach kernels, torch's default there.
A group's `fused` / `foreach` (True or False) overrides the choice, as in torch.optim.
Only what cnntools exposes is implemented: momentum / nesterov / coupled weight decay for
SGD, coupled (Adam) or decoupled (AdamW) weight decay for Adam; no amsgrad, maximize,
capturable or differentiable.
"""

from __future__ import annotations

import functools

import torch
from torch.optim import Optimizer


def _undecorated(name: str):
    """`Optimizer.<name>` without `@torch._disable_dynamo` (which imports torch._dynamo on its
    first call); the function itself where a torch version does not decorate it."""
    method = getattr(Optimizer, name)
    return getattr(method, "__wrapped__", method)


_UNSUPPORTED = ("amsgrad", "maximize", "capturable", "differentiable")


def _scalar_dtype() -> torch.dtype:
    """The dtype torch.optim keeps Adam's 'step' in (float32 unless the default dtype is float64)."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


@functools.cache
def _fused_on_cpu() -> bool:
    """Whether this torch has the optimizers' fused kernels for the CPU (2.4 and later)."""
    from torch.utils import _foreach_utils

    supported = getattr(_foreach_utils, "_get_fused_kernels_supported_devices", lambda: [])
    return "cpu" in supported()


def _kernel(group: dict, device: torch.device) -> str:
    """"fused", "foreach" or "for-loop": the group's `fused`/`foreach` where set (as torch.optim
    reads them), else fused kernels on the CPU where torch has them, foreach on CUDA/XPU, and
    tensor by tensor elsewhere."""
    if group.get("fused"):
        if device.type != "cpu" or not _fused_on_cpu():
            raise NotImplementedError(f"cnntools' optimizer has fused kernels only on a CPU with torch >= 2.4, not {device}")
        return "fused"
    if group.get("foreach") is not None:
        return "foreach" if group["foreach"] else "for-loop"
    if device.type == "cpu" and group.get("fused") is None and _fused_on_cpu():
        return "fused"
    return "foreach" if device.type in ("cuda", "xpu") else "for-loop"


def _by_device_and_dtype(*lists: list) -> list[list[list]]:
    """The parallel `lists` split by their first list's (device, dtype), as foreach and fused
    kernels want: torch.optim's own grouping (in C++; entries of the later lists may be None)."""
    from torch.utils._foreach_utils import _group_tensors_by_device_and_dtype

    return [grouped for grouped, _ in _group_tensors_by_device_and_dtype(list(lists)).values()]


def _strided_like(tensor: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """`tensor` with `param`'s strides, copied only where they differ. The fused kernels walk
    each tensor's memory in the parameter's order, so a gradient or state in another layout (a
    channels_last model's Adam state loaded from a file, which stores it contiguous) would be
    read out of place. Backward gives gradients the parameter's strides already (torch's
    own fused=True does not check this on the CPU and updates the wrong entries). Strides of
    size-1 dimensions do not move anything, so they may differ (pytorch/pytorch#106951)."""
    strides = tensor.stride()
    if strides == param.stride() or all(a == b for a, b, n in zip(strides, param.stride(), param.shape) if n > 1):
        return tensor
    return torch.empty_like(param).copy_(tensor)


class _NoDynamoOptimizer(Optimizer):
    """torch.optim.Optimizer whose bookkeeping methods skip the dynamo decorator."""

    def add_param_group(self, param_group: dict) -> None:
        _undecorated("add_param_group")(self, param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        _undecorated("zero_grad")(self, set_to_none)

    def state_dict(self) -> dict:
        return _undecorated("state_dict")(self)

    def load_state_dict(self, state_dict: dict) -> None:
        _undecorated("load_state_dict")(self, state_dict)

    def step(self, closure=None):
        """One update of every parameter that has a gradient; `closure` as torch.optim's."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with torch.no_grad():
            for group in self.param_groups:
                unsupported = [key for key in _UNSUPPORTED if group.get(key)]
                if unsupported:
                    raise NotImplementedError(f"{type(self).__name__}: cnntools' optimizer has no {', '.join(unsupported)}")
                params = [p for p in group["params"] if p.grad is not None]
                if params:
                    self._update(group, params)
        return loss

    def _update(self, group: dict, params: list) -> None:
        raise NotImplementedError


class SGD(_NoDynamoOptimizer):
    """torch.optim.SGD (momentum, dampening, nesterov, coupled weight decay)."""

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0, dampening: float = 0,
                 weight_decay: float = 0, nesterov: bool = False, *, foreach: bool | None = None) -> None:
        if lr < 0.0 or momentum < 0.0 or weight_decay < 0.0:
            raise ValueError(f"invalid SGD settings: lr {lr}, momentum {momentum}, weight_decay {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        # The keys and defaults of torch.optim.SGD (torch 2.14), so state dicts load both ways.
        defaults = {"lr": lr, "momentum": momentum, "dampening": dampening, "weight_decay": weight_decay,
                    "nesterov": nesterov, "maximize": False, "foreach": foreach, "differentiable": False, "fused": None}
        super().__init__(params, defaults)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        for group in self.param_groups:  # as torch.optim.SGD, for states from older torch
            group.setdefault("nesterov", False)
            group.setdefault("maximize", False)
            group.setdefault("foreach", None)
            group.setdefault("differentiable", False)
            group.setdefault("fused", False)

    def _update(self, group: dict, params: list) -> None:
        momentum = group["momentum"]
        bufs = [self.state[p].get("momentum_buffer") for p in params] if momentum != 0 else [None] * len(params)
        bufs = [buf if buf is None else _strided_like(buf, p) for buf, p in zip(bufs, params)]
        grads = [_strided_like(p.grad, p) for p in params]
        for device_params, device_grads, device_bufs in _by_device_and_dtype(params, grads, bufs):
            kernel = _kernel(group, device_params[0].device)
            if kernel == "fused":
                _sgd_fused(device_params, device_grads, device_bufs, group)
            elif kernel == "foreach":
                torch._foreach_add_(device_params, _sgd_directions(device_params, device_grads, device_bufs, group),
                                    alpha=-group["lr"])
            else:
                _sgd_tensor_by_tensor(device_params, device_grads, device_bufs, group)
            if momentum != 0:
                for p, buf in zip(device_params, device_bufs):
                    self.state[p]["momentum_buffer"] = buf


def _sgd_tensor_by_tensor(params: list, grads: list, bufs: list, group: dict) -> None:
    """torch.optim.sgd's update, its for-loop form, operation for operation (`bufs` filled in
    place where they start)."""
    momentum, weight_decay, dampening, lr = group["momentum"], group["weight_decay"], group["dampening"], group["lr"]
    for i, param in enumerate(params):
        grad = grads[i]
        if weight_decay != 0:
            grad = grad.add(param, alpha=weight_decay)
        if momentum != 0:
            buf = bufs[i]
            if buf is None:
                buf = bufs[i] = grad.detach().clone()
            else:
                buf.mul_(momentum).add_(grad, alpha=1 - dampening)
            grad = grad.add(buf, alpha=momentum) if group["nesterov"] else buf
        param.add_(grad, alpha=-lr)


def _sgd_fused(params: list, grads: list, bufs: list, group: dict) -> None:
    """torch.optim.sgd's fused update (`bufs` filled in place where they start). A parameter
    whose momentum starts after the others' (its first gradient came late) takes that first
    step tensor by tensor, as the kernel takes "first step" for all tensors or none."""
    momentum = group["momentum"]
    first_step = momentum != 0 and all(buf is None for buf in bufs)
    if first_step:
        bufs[:] = [torch.empty_like(g) for g in grads]  # the kernel copies the gradient in
    late = [i for i, buf in enumerate(bufs) if buf is None] if momentum != 0 else []
    if late:
        late_bufs = [None] * len(late)
        _sgd_tensor_by_tensor([params[i] for i in late], [grads[i] for i in late], late_bufs, group)
        for i, buf in zip(late, late_bufs):
            bufs[i] = buf
        rest = [i for i in range(len(params)) if i not in late]
        params, grads, bufs = [params[i] for i in rest], [grads[i] for i in rest], [bufs[i] for i in rest]
    torch._fused_sgd_(params, grads, bufs if momentum != 0 else [],
                      weight_decay=group["weight_decay"], momentum=momentum, lr=group["lr"],
                      dampening=group["dampening"], nesterov=group["nesterov"], maximize=False,
                      is_first_step=first_step, grad_scale=None, found_inf=None)


def _sgd_directions(params: list, grads: list, bufs: list, group: dict) -> list:
    """torch's SGD step directions, its foreach form (`bufs` filled in place where they start);
    order of operations as torch.optim.sgd's, so the results agree up to rounding."""
    momentum, weight_decay = group["momentum"], group["weight_decay"]
    if weight_decay != 0:
        grads = torch._foreach_add(grads, params, alpha=weight_decay)
    if momentum == 0:
        return grads
    if all(buf is not None for buf in bufs):
        torch._foreach_mul_(bufs, momentum)
        torch._foreach_add_(bufs, grads, alpha=1 - group["dampening"])
    else:  # first step: the buffer starts as the gradient itself
        for i, grad in enumerate(grads):
            if bufs[i] is None:
                bufs[i] = grad.detach().clone()
            else:
                bufs[i].mul_(momentum).add_(grad, alpha=1 - group["dampening"])
    # Out of place, unlike torch's foreach path: the gradients are left as backward made them.
    return torch._foreach_add(grads, bufs, alpha=momentum) if group["nesterov"] else list(bufs)


class Adam(_NoDynamoOptimizer):
    """torch.optim.Adam with L2 weight decay added to the gradient (`decoupled_weight_decay`
    False) or torch.optim.AdamW's decoupled decay (True)."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0, *, decoupled_weight_decay: bool = False, foreach: bool | None = None) -> None:
        if lr < 0.0 or eps < 0.0 or weight_decay < 0.0 or not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"invalid Adam settings: lr {lr}, betas {betas}, eps {eps}, weight_decay {weight_decay}")
        # The keys and defaults of torch.optim.Adam/AdamW (torch 2.14), so state dicts load both ways.
        defaults = {"lr": lr, "betas": (float(betas[0]), float(betas[1])), "eps": eps, "weight_decay": weight_decay,
                    "amsgrad": False, "maximize": False, "foreach": foreach, "capturable": False,
                    "differentiable": False, "fused": None, "decoupled_weight_decay": decoupled_weight_decay}
        super().__init__(params, defaults)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        for group in self.param_groups:  # as torch.optim.Adam, for states from older torch
            for key, value in (("amsgrad", False), ("maximize", False), ("foreach", None), ("capturable", False),
                               ("differentiable", False), ("fused", None),
                               ("decoupled_weight_decay", self.defaults["decoupled_weight_decay"])):
                group.setdefault(key, value)
            for p in group["params"]:
                p_state = self.state.get(p, {})
                if p_state and not torch.is_tensor(p_state["step"]):
                    p_state["step"] = torch.tensor(float(p_state["step"]), dtype=_scalar_dtype())

    def _update(self, group: dict, params: list) -> None:
        for p in params:
            state = self.state[p]
            if not state:
                # 'step' lives on the CPU as a float32 scalar tensor, as in torch.optim.Adam.
                state["step"] = torch.tensor(0.0, dtype=_scalar_dtype())
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            else:  # after a load_state_dict, in the file's layout
                state["exp_avg"], state["exp_avg_sq"] = _strided_like(state["exp_avg"], p), _strided_like(state["exp_avg_sq"], p)
        grads = [_strided_like(p.grad, p) for p in params]
        lists = (grads, *([self.state[p][key] for p in params] for key in ("exp_avg", "exp_avg_sq", "step")))
        updates = {"fused": _adam_fused, "foreach": _adam_foreach, "for-loop": _adam_tensor_by_tensor}
        for device_params, grads, exp_avgs, exp_avg_sqs, steps in _by_device_and_dtype(params, *lists):
            updates[_kernel(group, device_params[0].device)](device_params, grads, exp_avgs, exp_avg_sqs, steps, group)


def _adam_tensor_by_tensor(params: list, grads: list, exp_avgs: list, exp_avg_sqs: list, steps: list,
                           group: dict) -> None:
    """torch.optim.adam's update, its for-loop form, operation for operation."""
    lr, weight_decay, eps = group["lr"], group["weight_decay"], group["eps"]
    beta1, beta2 = group["betas"]
    for i, param in enumerate(params):
        grad, exp_avg, exp_avg_sq = grads[i], exp_avgs[i], exp_avg_sqs[i]
        steps[i].add_(1)
        if weight_decay != 0:
            if group["decoupled_weight_decay"]:
                param.mul_(1 - lr * weight_decay)
            else:
                grad = grad.add(param, alpha=weight_decay)
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        step = steps[i].item()
        step_size = lr / (1 - beta1 ** step)
        bias_correction2_sqrt = (1 - beta2 ** step) ** 0.5
        denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
        param.addcdiv_(exp_avg, denom, value=-step_size)


def _adam_foreach(params: list, grads: list, exp_avgs: list, exp_avg_sqs: list, steps: list, group: dict) -> None:
    """torch.optim.adam's update, its foreach form, operation for operation."""
    lr, weight_decay, eps = group["lr"], group["weight_decay"], group["eps"]
    beta1, beta2 = group["betas"]
    torch._foreach_add_(steps, 1)
    if weight_decay != 0:
        if group["decoupled_weight_decay"]:
            torch._foreach_mul_(params, 1 - lr * weight_decay)
        else:
            grads = torch._foreach_add(grads, params, alpha=weight_decay)
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
    counts = [step.item() for step in steps]
    step_sizes = [(lr / (1 - beta1 ** n)) * -1 for n in counts]
    bias_correction2_sqrt = [(1 - beta2 ** n) ** 0.5 for n in counts]
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denom, bias_correction2_sqrt)
    torch._foreach_add_(denom, eps)
    torch._foreach_addcdiv_(params, exp_avgs, denom, step_sizes)


def _adam_fused(params: list, grads: list, exp_avgs: list, exp_avg_sqs: list, steps: list, group: dict) -> None:
    """torch.optim.adam's fused update (Adam's or AdamW's kernel)."""
    beta1, beta2 = group["betas"]
    torch._foreach_add_(steps, 1)
    kernel = torch._fused_adamw_ if group["decoupled_weight_decay"] else torch._fused_adam_
    kernel(params, grads, exp_avgs, exp_avg_sqs, [], steps, amsgrad=False, lr=group["lr"], beta1=beta1, beta2=beta2,
           weight_decay=group["weight_decay"], eps=group["eps"], maximize=False, grad_scale=None, found_inf=None)


class AdamW(Adam):
    """torch.optim.AdamW: Adam with decoupled weight decay."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, *, foreach: bool | None = None) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, decoupled_weight_decay=True, foreach=foreach)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        for group in self.param_groups:  # as torch.optim.AdamW: a loaded state never turns it into Adam
            group["decoupled_weight_decay"] = True
