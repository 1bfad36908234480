"""The kernel tests need Triton's CPU interpreter, which must be on before triton is first imported
(bitsandbytes and transformers import it early): test_kernels_under_interpreter.py runs the
*_interpreted.py files in a child pytest with TRITON_INTERPRET=1, so no other test, and no other
test's child process, ever sees the variable.
"""

from __future__ import annotations

import os

import pytest

if os.environ.get("TRITON_INTERPRET") == "1":
    collect_ignore = ["test_kernels_under_interpreter.py"]
else:
    collect_ignore_glob = ["test_*_interpreted.py"]


@pytest.fixture(autouse=True)
def fused_kernel_state(monkeypatch):
    from engine import quantization

    monkeypatch.delenv("CANVAS_CHAT_NF4_KERNEL", raising=False)
    monkeypatch.setattr(quantization, "_fused_failure", {})
