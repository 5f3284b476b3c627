"""Constructor arguments of `timm:NAME` and `torchvision:NAME` models are shapes and rates, never files.

`--arch-args` and a checkpoint's `arch_args` go to `timm.create_model` / torchvision's
builders, which also take arguments that read files or fetch them (`checkpoint_path`,
`pretrained`, `pretrained_cfg`, `weights`, `cache_dir`, ...). A crafted checkpoint must not be
able to name one, so only the architecture options below are accepted, and only as plain
values: numbers, booleans, null, short names made of letters, digits, `_`, `-` and `.`
(no `/`, `:` or `\\`, so no path and no URL), and flat lists of those.
"""

from __future__ import annotations

import math
import re

from cnntools.core.errors import CnnError

# Options of timm's and torchvision's classification models that shape the network (widths,
# depths, rates, pooling, activation and norm layers by name). Nothing here opens a file.
ALLOWED = frozenset({
    # regularisation
    "drop_rate", "drop_path_rate", "drop_block_rate", "proj_drop_rate", "attn_drop_rate", "pos_drop_rate",
    "patch_drop_rate", "dropout", "attention_dropout", "stochastic_depth_prob",
    # input and head
    "img_size", "image_size", "patch_size", "global_pool", "class_token", "no_embed_class", "reg_tokens",
    "dynamic_img_size", "dynamic_img_pad", "head_hidden_size", "representation_size", "fc_norm", "pre_norm",
    "aux_logits", "transform_input", "init_weights", "zero_init_residual", "zero_init_last",
    # widths and depths
    "embed_dim", "embed_dims", "depth", "depths", "layers", "num_layers", "num_heads", "hidden_dim", "mlp_dim",
    "mlp_ratio", "dims", "channels", "widths", "width", "base_width", "width_per_group", "groups", "cardinality",
    "stem_width", "stem_type", "width_mult", "width_multiplier", "depth_multiplier", "channel_multiplier",
    "round_nearest", "output_stride", "replace_stride_with_dilation", "window_size", "se_ratio", "fix_stem",
    "qkv_bias", "qk_norm", "init_values", "block_type", "down_kernel_size", "avg_down", "kernel_sizes",
    # layers by name (timm resolves them from its own tables)
    "act_layer", "norm_layer", "attn_layer", "aa_layer", "block_fn", "pooling",
})
MAX_TEXT = 64
MAX_LIST = 64
_NAME = re.compile(r"[A-Za-z0-9_.\-]*")


def check_arch_args(args: dict | None, where: str) -> dict:
    """`args` unchanged when every key is an allowed architecture option with a plain value;
    otherwise one clear error naming the key (`where`: the model, or the file it came from)."""
    if not args:
        return {}
    if not isinstance(args, dict):
        raise CnnError(f"{where}: arch_args must be an object of constructor arguments")
    for key, value in args.items():
        if key not in ALLOWED:
            raise CnnError(
                f"{where}: arch_args '{str(key)[:MAX_TEXT]}' is not an architecture option cnntools passes to timm or "
                "torchvision (options that load weights or name files, such as pretrained, checkpoint_path, "
                "pretrained_cfg or weights, are never taken from arguments)"
            )
        if not _plain(value):
            raise CnnError(
                f"{where}: arch_args '{key}' must be a number, true/false, null, a short name or a list of those "
                "(no paths or URLs)"
            )
    return args


def _plain(value, nested: bool = False) -> bool:
    if value is None or isinstance(value, bool) or isinstance(value, int):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, str):
        return len(value) <= MAX_TEXT and _NAME.fullmatch(value) is not None
    if isinstance(value, (list, tuple)) and not nested:
        return len(value) <= MAX_LIST and all(_plain(v, nested=True) for v in value)
    return False
