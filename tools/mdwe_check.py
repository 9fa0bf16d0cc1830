#!/usr/bin/python3
"""Does a backend work under systemd's MemoryDenyWriteExecute=yes? (docs/service.md)

Run with the *system* python3 (it needs Debian's python3-seccomp):

    /usr/bin/python3 tools/mdwe_check.py .venv/bin/python onnx|litert|openvino MODEL

It installs the same seccomp rules systemd uses for MemoryDenyWriteExecute (no W+X mmap, no
mprotect/pkey_mprotect adding PROT_EXEC, no SHM_EXEC shmat), then execs the venv python to
load MODEL and run it once on random input.
"""

import errno
import mmap
import os
import sys

PROBE = r"""
import sys, numpy as np
backend, model = sys.argv[1], sys.argv[2]
def feed(shape):
    dims = [int(d) if str(d).isdigit() and int(d) > 0 else 64 for d in shape]
    return np.random.rand(*dims).astype(np.float32)
if backend == "onnx":
    import onnxruntime as ort
    s = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    i = s.get_inputs()[0]
    s.run(None, {i.name: feed(i.shape)})
elif backend == "litert":
    from ai_edge_litert.interpreter import Interpreter
    it = Interpreter(model)
    it.allocate_tensors()
    d = it.get_input_details()[0]
    it.set_tensor(d["index"], feed(list(d["shape"])))
    it.invoke()
elif backend == "openvino":
    import openvino as ov
    m = ov.Core().compile_model(model, "CPU")
    m(feed(list(m.inputs[0].partial_shape.get_min_shape())))
print(f"{backend}: OK under MemoryDenyWriteExecute")
"""


def main() -> None:
    import seccomp  # Debian python3-seccomp

    python, backend, model = sys.argv[1:4]
    rules = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    eperm = seccomp.ERRNO(errno.EPERM)
    wx = mmap.PROT_EXEC | mmap.PROT_WRITE
    rules.add_rule(eperm, "mmap", seccomp.Arg(2, seccomp.MASKED_EQ, wx, wx))
    for call in ("mprotect", "pkey_mprotect"):
        rules.add_rule(
            eperm, call, seccomp.Arg(2, seccomp.MASKED_EQ, mmap.PROT_EXEC, mmap.PROT_EXEC)
        )
    shm_exec = 0o100000
    rules.add_rule(eperm, "shmat", seccomp.Arg(2, seccomp.MASKED_EQ, shm_exec, shm_exec))
    rules.load()
    os.execv(python, [python, "-c", PROBE, backend, model])


if __name__ == "__main__":
    main()
