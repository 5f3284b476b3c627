"""The environment variables cnntools reads, declared once: the man pages' ENVIRONMENT
section and `cnntools env` are rendered from this list, and a test checks that every
CNNTOOLS_* name the code reads is here."""

from __future__ import annotations

# (name, what it does), in the order the man pages list them.
ENVIRONMENT = (
    ("CNNTOOLS_CACHE", "Folder for decoded image stores (default: $XDG_CACHE_HOME/cnntools, else ~/.cache/cnntools); "
                       "off, 0, none, false or no keeps nothing between runs."),
    ("CNNTOOLS_THREADS", "Default of --threads (else OMP_NUM_THREADS when set, else the cores this process may use)."),
    ("CNNTOOLS_DEBUG", "1 shows the full traceback on errors, like --debug."),
    ("CNNTOOLS_TRUST_CODE", "1 runs your own model code (FILE.py:NAME, package.module:NAME), like --trust-code."),
    ("CNNTOOLS_MAX_IMAGE_PIXELS", "Largest image (width x height) that is decoded; default Pillow's 89,478,485."),
    ("NO_COLOR", "Set and not empty: no colour (no-color.org)."),
    ("FORCE_COLOR", "Set and not empty: colour even on a pipe or TERM=dumb (force-color.org); NO_COLOR wins."),
    ("XDG_CACHE_HOME", "Parent of the default cache folder."),
    ("OMP_NUM_THREADS", "Default of --threads when CNNTOOLS_THREADS is not set."),
    ("TORCH_HOME", "torch's hub folder, where torchvision:NAME weights are looked for ($TORCH_HOME/hub/checkpoints)."),
    ("HF_HUB_CACHE, HF_HOME", "The Hugging Face cache, where timm:NAME weights are looked for."),
)
