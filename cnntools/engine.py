"""The old home of training, inference, metrics and collectives, split by concern into
`cnntools.training`, `cnntools.inference`, `cnntools.metrics` and `cnntools.collectives`.

Only re-exports, so code written against the old layout keeps importing; new code imports
from the module that holds the name.
"""

from cnntools.collectives import broadcast_buffers, check_global_batch, reduce_sum, wrap_model  # noqa: F401
from cnntools.data.augment import DIGIT_DATASETS, resolve_augment  # noqa: F401
from cnntools.inference import predict, wants_channels_last  # noqa: F401
from cnntools.metrics import classification_metrics, logit_stats  # noqa: F401
from cnntools.training import *  # noqa: F401,F403
