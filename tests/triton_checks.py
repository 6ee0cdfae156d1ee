"""Running a triton check where it can run: on CUDA in this process, else on the CPU under triton's interpreter
(TRITON_INTERPRET=1) in a subprocess, because triton reads the variable when a kernel is defined."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]


def worst_error_of(module: str, check: str, local: Callable[[str], float]) -> float:
    """The float that `check` (a function of `module` taking a device) returns: local('cuda') on CUDA, else the
    function imported and run on 'cpu' by a subprocess under the interpreter."""
    if torch.cuda.is_available():
        return float(local("cuda"))
    code = f"import sys; sys.path.insert(0, {str(ROOT)!r}); from {module} import {check}; print({check}('cpu'))"
    r = subprocess.run([sys.executable, "-c", code], env={**os.environ, "TRITON_INTERPRET": "1"},
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    return float(r.stdout.strip().splitlines()[-1])
