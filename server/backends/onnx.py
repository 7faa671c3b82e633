"""ONNX Runtime backend."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import onnxruntime

from bnserve.core.repository import INPUT_NAME, ONNX_MODEL, TensorSpec
from bnserve.server.errors import StartupError

ONNX_TO_V2 = {
    "tensor(float)": "FP32",
    "tensor(float16)": "FP16",
    "tensor(double)": "FP64",
    "tensor(int64)": "INT64",
    "tensor(int32)": "INT32",
    "tensor(int8)": "INT8",
    "tensor(uint8)": "UINT8",
    "tensor(bool)": "BOOL",
}
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def cuda_provider_available() -> bool:
    return CUDA in onnxruntime.get_available_providers()


LIGHT_CALL_S = 100e-6
"""With --intra-op-threads 0, a model whose one-row call takes at most this on one thread keeps one thread."""


def cpu_pool_threads() -> int:
    """The intra-op thread count of a model that gets the pool: 0 (ONNX Runtime's default, one thread per
    physical core) when this process may run on every core, else one per core it may run on.

    ONNX Runtime's default pool pins its threads to cores of its own choosing, whatever taskset, a cpuset or a
    container's CPU set allows the process: under ``taskset -c 0`` one of its threads ran on core 1. Asked for
    a number of threads, it leaves their placement to the process's CPU set.
    """
    try:
        allowed = len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity masks on this platform (macOS)
        return 0
    return 0 if allowed >= (os.cpu_count() or allowed) else allowed


def session_options(intra_op_threads: int) -> onnxruntime.SessionOptions:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = intra_op_threads  # 0: ONNX Runtime's default (physical cores)
    # The pool's threads spin within a call, between its parallel sections, and stop when the call returns
    # (ONNX Runtime's force_spinning_stop). Spinning between calls too (its default) kept every core busy
    # and starved the event loop that feeds them: on 2 cores it halved throughput at concurrency 32. Not
    # spinning at all made every parallel section wake a sleeping thread: ResNet50 at batch 1 took 4.05 ms
    # a call against 3.43 (docs/benchmarks.md, 2026-12-08).
    options.add_session_config_entry("session.intra_op.allow_spinning", "1")
    options.add_session_config_entry("session.force_spinning_stop", "1")
    return options


def one_row_call_seconds(session: onnxruntime.InferenceSession) -> float:
    """The fastest of 5 calls on one zero row, after one warm-up call. Raises what ONNX Runtime raises for a
    model that cannot take such a row (the signature check then names the difference)."""
    model_input = session.get_inputs()[0]
    images = np.zeros(
        [1, *(d if isinstance(d, int) and d > 0 else 1 for d in model_input.shape[1:])], np.float32
    )
    names = [output.name for output in session.get_outputs()]
    session.run(names, {model_input.name: images})
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        session.run(names, {model_input.name: images})
        best = min(best, time.perf_counter() - started)
    return best


class OnnxBackend:
    platform = "onnxruntime_onnx"

    def __init__(self, version_dir: Path, device: str, intra_op_threads: int = 0):
        """``intra_op_threads`` 0 chooses: on the CPU, one thread when a one-row call takes at most LIGHT_CALL_S
        on one thread, else the pool (cpu_pool_threads: ONNX Runtime's default, kept within this process's
        cores). Waking a pool thread (it sleeps between calls) costs tens of microseconds and a core that the event loop
        and gRPC's poller want too: more than a light model's whole call (README, "intra-op-threads", for the
        measurement)."""
        providers = (
            [CUDA, CPU] if device in ("auto", "gpu") and cuda_provider_available() else [CPU]
        )
        path = str(version_dir / ONNX_MODEL)
        on_cpu = providers == [CPU]
        self.intra_op_threads = 1 if on_cpu and intra_op_threads == 0 else intra_op_threads
        self.session = onnxruntime.InferenceSession(
            path, session_options(self.intra_op_threads), providers=providers
        )
        if on_cpu and intra_op_threads == 0 and not self._light():
            self.intra_op_threads = cpu_pool_threads()
            if self.intra_op_threads != 1:
                self.session = onnxruntime.InferenceSession(
                    path, session_options(self.intra_op_threads), providers=providers
                )
        # ONNX Runtime silently falls back to the CPU when CUDA cannot start: check what it picked.
        self.device = "gpu" if self.session.get_providers()[0] == CUDA else "cpu"
        if device == "gpu" and self.device != "gpu":
            raise StartupError(
                f"--device gpu: ONNX Runtime has no usable CUDA provider (available: "
                f"{', '.join(onnxruntime.get_available_providers())}); install bnserve[gpu]"
            )

    def _light(self) -> bool:
        """Whether a one-row call takes at most LIGHT_CALL_S on this one-thread session; True when the model cannot
        take a row at all: the load's signature check and warm-up refuse it with the precise reason."""
        try:
            return one_row_call_seconds(self.session) <= LIGHT_CALL_S
        except Exception:
            return True

    def run(self, images: np.ndarray, outputs: list[str]) -> dict[str, np.ndarray]:
        return dict(zip(outputs, self.session.run(outputs, {INPUT_NAME: images})))

    def signature(self) -> tuple[list[TensorSpec], list[TensorSpec]]:
        def spec(node) -> TensorSpec:
            datatype = ONNX_TO_V2.get(node.type, node.type)
            return TensorSpec(
                node.name, datatype, tuple(d if isinstance(d, int) else -1 for d in node.shape)
            )

        return [spec(n) for n in self.session.get_inputs()], [
            spec(n) for n in self.session.get_outputs()
        ]
