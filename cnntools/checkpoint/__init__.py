"""Self-describing safetensors checkpoints, and models by name (`torchvision:NAME`).

A cnntools checkpoint is a plain `.safetensors` file. Its tensors are the model's state
dict (no `module.`/`_orig_mod.` prefixes); its metadata (safetensors' string-to-string
map) holds one JSON value per key:

    format            "cnntools-checkpoint"
    format_version    1
    arch              {"arch": "lenet", "in_channels": 3, "image_size": 32, "num_classes": 10, ...}
    classes           ["airplane", ...]
    mean, std         per-channel normalisation, [0, 1] pixel scale
    image_size        input side in pixels;  in_channels
    data              {"spec": "digits", "data_dir": null, "val_split": 0.1, "seed": 0}
    train_config      the resolved training options, seed included
    metrics           final metrics (of the kept epoch)
    history           one record per epoch
    steps             step records: the training loss every --print-every updates, --val-every validations
    label             the run's name in figures and tables (train --label, or derived from its options)
    written_by        {"cnntools": VERSION, "torch": VERSION} of the program that wrote the file
    resume            (resumable files only) JSON part of the training state, see below

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
    FORMAT,
    FORMAT_VERSION,
    MAX_HEADER_BYTES,
    MAX_METADATA_BYTES,
    RESUME_PREFIX,
    checkpoint_bytes,
    clean_state_dict,
    model_state,
    pack,
    read_checkpoint,
    resume_state,
    save_checkpoint,
    unpack,
    unwrap_model,
)
from cnntools.checkpoint.metadata import validate_metadata

# Loading a model needs torch; reading and validating a file's header does not, so these are
# imported on first use (PEP 562) and `cnntools.checkpoint` itself stays torch-free.
_MODEL_LOADING = ("TORCHVISION_PREFIX", "LoadedModel", "build_model", "check_weights", "load_model")


def __getattr__(name: str):
    if name in _MODEL_LOADING:
        from cnntools.checkpoint import model_loading

        return getattr(model_loading, name)
    raise AttributeError(f"module 'cnntools.checkpoint' has no attribute {name!r}")


__all__ = [
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
    "model_state",
    "pack",
    "read_checkpoint",
    "resume_state",
    "save_checkpoint",
    "unpack",
    "unwrap_model",
    "validate_metadata",
]
