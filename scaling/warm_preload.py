"""Imported by the warm-worker forkserver (scaling/worker.py) before it forks any run: importing
this module imports the trainer's heavy dependencies, and nothing else.

The accelerator is decided here, as `scaling.train` would decide it for `train.device=auto`, but
without initialising CUDA (NVML's device count): a CUDA context created before a fork is unusable
in the child.
"""

import importlib
import os

os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")

import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("DS_ACCELERATOR", "cpu")

from scaling.worker import PRELOAD  # noqa: E402

for _name in PRELOAD:
    importlib.import_module(_name)
