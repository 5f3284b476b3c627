"""The one hook holder: every forward, pre-forward and backward hook cnntools puts on a model.

`Hooks` is a context manager (the way pytorch-grad-cam's `ActivationsAndGradients` is the
one place its CAM methods hook a model): hooks are added with `forward`, `forward_pre` and
`backward` (or `record`, which keeps named layers' activations in a dict) and all of them are
removed when the block exits, errors included. Leaked hooks are the most reported memory
problem of hook-based tools; with one holder there is one place that removes them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable


class Hooks:
    """Hooks on a model's modules for the duration of a `with` block.

        with Hooks() as hooks:
            acts = hooks.record(model, ["features.0", "features.3"])
            model(x)          # acts["features.0"] is that layer's output of this pass
    """

    def __init__(self):
        self.handles: list = []

    def forward(self, module, fn: Callable) -> None:
        """`fn(module, args, output)` after `module` runs; a value it returns replaces the output."""
        self.handles.append(module.register_forward_hook(fn))

    def forward_pre(self, module, fn: Callable) -> None:
        """`fn(module, args)` before `module` runs."""
        self.handles.append(module.register_forward_pre_hook(fn))

    def backward(self, module, fn: Callable) -> None:
        """`fn(module, grad_input, grad_output)` when the gradients of `module`'s inputs are
        computed; a tuple it returns replaces grad_input."""
        self.handles.append(module.register_full_backward_hook(fn))

    def record(self, model, names: Iterable[str], *, inputs: bool = False, clone: bool = True) -> dict:
        """Keep the named layers' outputs (with `inputs`: their first inputs) in the returned
        dict, the last pass's tensor per name; the first element where a layer returns a tuple.

        Cloned by default, so a following in-place op (ReLU(inplace=True)) cannot overwrite what
        was recorded; `clone=False` keeps the tensor itself (it stays in the autograd graph).
        """
        from cnntools.models.layers import get_layer

        store: dict = {}

        def keep(name: str, value) -> None:
            if isinstance(value, (tuple, list)):
                value = value[0]
            store[name] = value.detach().clone() if clone else value

        for name in names:
            layer = get_layer(model, name)
            if inputs:
                self.forward_pre(layer, lambda _m, args, name=name: keep(name, args))
            else:
                self.forward(layer, lambda _m, _args, out, name=name: keep(name, out))
        return store

    def remove(self) -> None:
        """Remove every hook added so far (also done on leaving the `with` block)."""
        while self.handles:
            self.handles.pop().remove()

    def __enter__(self) -> "Hooks":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
