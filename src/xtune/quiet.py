"""Keep the libraries' chatter out of xtune's output: their progress bars ("Loading weights", "Saving the dataset"),
their log warnings (bitsandbytes' kernel fallback, kernels' offline notice) and their Python warnings (deprecations
inside transformers and PEFT) said nothing a user of xtune could act on, and buried the answer. `xtune --verbose`
leaves them all as the libraries print them; errors are always shown."""

from __future__ import annotations

import logging
import os
import sys
import warnings

# Read by the libraries when they are imported, and inherited by the processes they start (torchrun's workers,
# datasets.map's), so set before anything imports them. A value the user set wins.
QUIET_ENVIRONMENT = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # huggingface_hub's, and transformers' ("Loading weights", "Writing ...")
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",  # "Generating train split", "Saving the dataset", "Map"
    "TRANSFORMERS_VERBOSITY": "error",
    "DATASETS_VERBOSITY": "error",
}
# Libraries that log through the standard logging module without a handler of their own, so their warnings reach
# stderr through logging's last-resort handler.
QUIET_LOGGERS = ("bitsandbytes", "kernels", "peft", "accelerate", "huggingface_hub", "lm_eval")


def quiet_libraries() -> None:
    """Hide the libraries' progress bars, log warnings and Python warnings for the rest of this process (and
    the processes it starts). Warnings raised from xtune's own code still show."""
    for key, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    if not sys.warnoptions:  # -W or PYTHONWARNINGS: the user chose what to see
        warnings.filterwarnings("ignore")
        # Python attributes a warning to the module at its stacklevel: one that points at xtune's code is ours to fix
        warnings.filterwarnings("default", module=r"xtune(\.|$)")
