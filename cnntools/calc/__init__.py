"""Torch-free arithmetic behind `conv-calc` and `rf-calc`.

- `conv`: output sizes of conv / pool / transposed-conv layers (PyTorch's rules) and the
  `--layers` chain syntax;
- `kernel`: kernels applied to a small matrix by hand, with every multiply-add kept;
- `rf`: receptive field, jump and start of a layer stack (Araujo et al., Distill 2019);
- `rf_graph`: the same along a real model's torch.fx graph (imports torch lazily).
"""
