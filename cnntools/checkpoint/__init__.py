"""Self-describing safetensors checkpoints, and models by name (`torchvision:NAME`).

A cnntools checkpoint is a plain `.safetensors` file. Its tensors are the model's state
dict (no `module.`/`_orig_mod.` prefixes); its metadata (safetensors' string-to-string
map) is one `CheckpointMeta` record, one JSON value per key (`metadata` lists the keys).

Resume state lives in the same file. Tensors whose names start with `_resume/` hold its
tensor part (optimizer moments as `_resume/optimizer/state/<param>/<key>`, RNG states as
`_resume/rng/...`, and under `--keep best` the last epoch's weights as `_resume/model/...`
when they differ from the kept ones); the `resume` metadata entry holds the rest (epoch,
batch position, step counts, scheduler state, best metric) with `{"__tensor__": NAME}`
standing for each tensor. `load_model` ignores all of it.

The file format is in `file_format`, the metadata checks in `metadata`, and rebuilding a
model from a file in `model_loading`.

Nothing here ever unpickles a file: pickles (`torch.save`'s `.pt`/`.pth`) are recognised by
their magic bytes and refused. The one exception is torchvision's own published ImageNet
weights for `torchvision:NAME`, read from the local torch hub cache with torch's restricted
`weights_only` loader.
"""

from cnntools.checkpoint.file_format import (
    DTYPE_BYTES,
    MAX_HEADER_BYTES,
    MAX_METADATA_BYTES,
    RESUME_PREFIX,
    checkpoint_bytes,
    clean_state_dict,
    model_state,
    pack,
    read_checkpoint,
    read_metadata,
    resume_state,
    save_checkpoint,
    unpack,
    unwrap_model,
)
from cnntools.checkpoint.metadata import FORMAT, FORMAT_VERSION, CheckpointMeta, DataRecipe, validate_metadata

# Loading a model needs torch; reading and validating a file's header does not, so these are
# imported on first use (PEP 562) and `cnntools.checkpoint` itself stays torch-free.
_MODEL_LOADING = ("TORCHVISION_PREFIX", "LoadedModel", "build_model", "check_weights", "load_model", "model_code")


def __getattr__(name: str):
    if name in _MODEL_LOADING:
        from cnntools.checkpoint import model_loading

        return getattr(model_loading, name)
    raise AttributeError(f"module 'cnntools.checkpoint' has no attribute {name!r}")


__all__ = [
    "CheckpointMeta",
    "DataRecipe",
    "DTYPE_BYTES",
    "FORMAT",
    "FORMAT_VERSION",
    "LoadedModel",
    "MAX_HEADER_BYTES",
    "MAX_METADATA_BYTES",
    "RESUME_PREFIX",
    "TORCHVISION_PREFIX",
    "build_model",
    "check_weights",
    "checkpoint_bytes",
    "clean_state_dict",
    "load_model",
    "model_code",
    "model_state",
    "pack",
    "read_checkpoint",
    "read_metadata",
    "resume_state",
    "save_checkpoint",
    "unpack",
    "unwrap_model",
    "validate_metadata",
]
