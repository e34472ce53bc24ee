"""Run the Triton kernels in Triton's interpreter on machines without a CUDA GPU.

Triton reads TRITON_INTERPRET when ``triton.language`` is imported and when a kernel is decorated, so it
must be set before anything imports triton: here, at collection time. It is set only where no CUDA GPU is
present, so that on a GPU machine the ``gpu`` tests run the compiled kernels (set TRITON_INTERPRET=1
yourself there to run the ``interpreter`` tests instead). Nothing else in floatzip's tests uses Triton.
"""

from __future__ import annotations

import os

import torch

if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
