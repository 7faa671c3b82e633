"""Per-version inference statistics, in the shape of Triton's ModelStatistics."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass(slots=True)
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns


@dataclass(slots=True)
class BatchDurations:
    """The model executions of one batch size: ``compute_*.count`` is their number."""

    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


def total(durations: list[Duration]) -> Duration:
    return Duration(sum(d.count for d in durations), sum(d.ns for d in durations))


@dataclass
class VersionStatistics:
    """Updated on the event loop thread only, so no lock is needed.

    An execution is recorded once, under its batch size; the totals over batch sizes are summed when a
    statistics request reads them, not on every model call."""

    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    last_inference_ns: int = 0
    """Wall-clock time (time.time_ns) of the last execution; 0 before the first."""
    infer_ns: int = 0
    """compute_infer.ns kept as it grows: the drift monitor reads it on every sampled request."""
    batches: dict[int, BatchDurations] = field(default_factory=dict)

    @property
    def compute_input(self) -> Duration:
        return total([d.compute_input for d in list(self.batches.values())])

    @property
    def compute_infer(self) -> Duration:
        return total([d.compute_infer for d in list(self.batches.values())])

    @property
    def compute_output(self) -> Duration:
        return total([d.compute_output for d in list(self.batches.values())])

    @property
    def execution_count(self) -> int:
        """Model executions (a batch counts once)."""
        return sum(d.compute_infer.count for d in list(self.batches.values()))

    @property
    def inference_count(self) -> int:
        """Samples inferred (a batch of 8 counts 8)."""
        return sum(size * d.compute_infer.count for size, d in list(self.batches.items()))

    @property
    def last_inference_ms(self) -> int:
        return self.last_inference_ns // 1_000_000

    def record_execution(
        self, batch_size: int, input_ns: int, infer_ns: int, output_ns: int
    ) -> None:
        self.last_inference_ns = time.time_ns()
        durations = self.batches.get(batch_size)
        if durations is None:
            durations = self.batches[batch_size] = BatchDurations()
        durations.compute_input.add(input_ns)
        durations.compute_infer.add(infer_ns)
        durations.compute_output.add(output_ns)
        self.infer_ns += infer_ns

    def record_request(self, ok: bool, total_ns: int) -> None:
        (self.success if ok else self.fail).add(total_ns)
