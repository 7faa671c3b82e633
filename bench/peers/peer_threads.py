"""The peers' ONNX Runtime session options, as bnserve's (server/backends/onnx.py ``session_options``): the
pool held to the cores the process may use, spinning within a call only.

ONNX Runtime's default pool (intra_op_num_threads 0) pins one thread per physical core, to cores of its own
choosing, whatever taskset allowed the process: with the servers held to core 0, KServe's and MLServer's
conv6 ran 1.34 and 1.25 cores, the second one the load generator's, against bnserve's 0.97-1.00
(docs/benchmarks.md, 2026-12-07). A cpuset or a container's CPU set would have held them; taskset does not.
Asked for a number of threads, ONNX Runtime leaves their placement to the process's CPU set. This is
bnserve's ``cpu_pool_threads`` (server/backends/onnx.py), repeated here because each peer runs in its own
virtual environment, without bnserve.
"""

import os

import onnxruntime


def intra_op_threads() -> int:
    """0 (ONNX Runtime's default) when this process may run on every core, else one per core it may run on."""
    try:
        allowed = len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity masks on this platform (macOS)
        return 0
    return 0 if allowed >= (os.cpu_count() or allowed) else allowed


def session_options() -> onnxruntime.SessionOptions:
    """As bnserve's: the pool spins within a call and stops when it returns, fair to the event loop, and stays
    on the cores taskset allows (intra_op_threads)."""
    options = onnxruntime.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "1")
    options.add_session_config_entry("session.force_spinning_stop", "1")
    options.intra_op_num_threads = intra_op_threads()
    return options
