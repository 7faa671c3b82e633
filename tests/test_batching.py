"""The dynamic batcher on its own, with a real (NumPy) model function and a real thread pool."""

import asyncio
import threading
import time

import numpy as np
import pytest

from bnserve.server.batching import BUSY_WINDOW_S, BatchingOptions, DynamicBatcher, LoopBusy
from bnserve.server.errors import DeadlineExceeded, QueueFull
from bnserve.server.execution import ModelThreads


class Model:
    """y = 2x and the per-sample sum; records every call's batch size; can be held to fill the queue.

    2x and sums of small integers are exact in float32, so its results compare bit for bit.
    """

    def __init__(self):
        self.calls: list[int] = []
        self.entered = 0
        self.gate = threading.Event()
        self.gate.set()
        self.fail_when = None

    def __call__(self, images, outputs):
        self.entered += 1
        self.gate.wait(10)
        self.calls.append(len(images))
        if self.fail_when is not None and np.any(images == self.fail_when):
            raise RuntimeError("model failure")
        results = {"double": images * 2, "total": images.reshape(len(images), -1).sum(axis=1)}
        return {name: results[name] for name in outputs}


@pytest.fixture
def executor():
    threads = ModelThreads(1)
    yield threads
    threads.shutdown()


def make(model, executor, **options):
    options.setdefault("max_queue_delay_us", 0)  # the tests that are about the delay set it
    # These tests hold the model inside a call to fill the queue: that call must be on a model thread
    # (held inline, it would hold the event loop). The tests about inline execution set it.
    options.setdefault("inline_compute_us", 0)
    # Only the tests about a busy event loop wait longer while it is busy: elsewhere a loop busy with the
    # test itself must not change how long a batch waits.
    options.setdefault("busy_queue_delay_us", 0)
    return DynamicBatcher(model, ["double", "total"], executor, BatchingOptions(**options))


def sample(value, batch=1):
    return np.full((batch, 2, 2, 1), value, np.float32)


async def occupy(batcher, model):
    """Submit one request (value 0) and hold it inside the model, so that the next requests queue."""
    model.gate.clear()
    held = asyncio.create_task(batcher.submit(sample(0), ["double"]))
    await wait_until(lambda: model.entered == 1)
    return held


async def wait_until(condition, timeout=60.0):  # a guard against a hang, not a claim about speed
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.001)


def test_requests_are_coalesced_up_to_the_limit_in_order(executor):
    model = Model()
    batcher = make(model, executor, max_batch_size=4)

    async def scenario():
        first = await occupy(batcher, model)
        rest = [
            asyncio.create_task(batcher.submit(sample(v), ["double", "total"]))
            for v in range(1, 11)
        ]
        await wait_until(lambda: batcher.queued == 10)
        model.gate.set()
        return await first, await asyncio.gather(*rest)

    first, rest = asyncio.run(scenario())
    assert model.calls == [1, 4, 4, 2]
    np.testing.assert_array_equal(first["double"], sample(0))
    assert set(first) == {"double"}
    for value, result in enumerate(rest, start=1):
        np.testing.assert_array_equal(result["double"], sample(2 * value))
        np.testing.assert_array_equal(result["total"], [4.0 * value])


def test_requests_of_several_samples_are_never_split(executor):
    model = Model()
    batcher = make(model, executor, max_batch_size=5)

    async def scenario():
        held = await occupy(batcher, model)
        sizes = [3, 3, 2, 5]
        tasks = [
            asyncio.create_task(batcher.submit(sample(i, n), ["double"]))
            for i, n in enumerate(sizes)
        ]
        await wait_until(lambda: batcher.queued == 4)
        model.gate.set()
        await held
        return sizes, await asyncio.gather(*tasks)

    sizes, results = asyncio.run(scenario())
    assert model.calls == [1, 3, 5, 5]
    assert [len(r["double"]) for r in results] == sizes


def test_a_lone_client_is_never_held_back(executor):
    model = Model()
    delay_s = 5.0
    batcher = make(model, executor, max_batch_size=8, max_queue_delay_us=int(delay_s * 1e6))

    async def scenario():
        started = time.monotonic()
        for value in range(5):  # one request at a time, as a single synchronous client sends them
            await batcher.submit(sample(value), ["double"])
        return time.monotonic() - started

    # Had any one of the five requests waited for companions, it alone would have taken delay_s.
    assert asyncio.run(scenario()) < delay_s
    assert model.calls == [1, 1, 1, 1, 1] and batcher.concurrency == 0


def concurrent_traffic(batcher, model, clients):
    """``clients`` requests at once while the model is held: each sees the others inside."""

    async def burst():
        model.gate.clear()
        tasks = [asyncio.create_task(batcher.submit(sample(v), ["double"])) for v in range(clients)]
        await wait_until(lambda: batcher.inside == clients)
        model.gate.set()
        await asyncio.gather(*tasks)

    return burst()


def test_concurrent_traffic_waits_for_companions_up_to_the_delay(executor):
    model = Model()
    delay_s = 2.0
    batcher = make(model, executor, max_batch_size=8, max_queue_delay_us=int(delay_s * 1e6))

    async def scenario():
        started = time.monotonic()
        for _ in range(3):
            await concurrent_traffic(batcher, model, 8)
        burst_s = (
            time.monotonic() - started
        ) / 3  # this machine's time for a burst of 8: the baseline
        assert batcher.concurrency > 3  # recent arrivals found several requests inside
        model.calls.clear()
        started = time.monotonic()
        first = asyncio.create_task(batcher.submit(sample(1), ["double"]))
        await asyncio.sleep(0.05)
        second = asyncio.create_task(batcher.submit(sample(2), ["double"]))
        results = await asyncio.gather(first, second)
        return time.monotonic() - started, burst_s, results

    elapsed, burst_s, results = asyncio.run(scenario())
    assert model.calls == [2]  # the second request arrived within the delay and shared the call
    # Nobody else came: the batch left when the delay ran out — not before (the 6 expected companions
    # never arrived), and not much later than the delay plus a few bursts' worth of this machine's time.
    assert delay_s - 0.01 <= elapsed < delay_s + 10 * burst_s + 1.0, (elapsed, burst_s)
    np.testing.assert_array_equal(results[1]["double"], sample(4))


def test_a_batch_leaves_as_soon_as_it_holds_the_expected_companions(executor):
    model = Model()
    batcher = make(model, executor, max_batch_size=64, max_queue_delay_us=5_000_000)

    async def scenario():
        for _ in range(4):
            await concurrent_traffic(batcher, model, 4)
        target = 1 + round(batcher.concurrency)
        model.calls.clear()
        started = time.monotonic()
        await asyncio.gather(*(batcher.submit(sample(v), ["double"]) for v in range(target)))
        return target, time.monotonic() - started

    target, elapsed = asyncio.run(scenario())
    # Waiting for the delay would take 5 s; leaving with the expected companions takes one model call.
    assert model.calls == [target] and elapsed < 5.0


def spin(seconds):
    """Keep this thread on a CPU for ``seconds`` of its own CPU time."""
    until = time.thread_time() + seconds
    while time.thread_time() < until:
        pass


def test_a_thread_that_computes_is_busy_and_one_that_sleeps_is_not():
    busy = LoopBusy()
    assert not busy.read()  # the first reading sets the baseline
    time.sleep(3 * BUSY_WINDOW_S)
    assert not busy.read()  # asleep, the thread took no CPU at all
    # Spinning, it takes all the CPU it is given; another process may take some of it, so a few windows
    # are allowed, but a LoopBusy that never reads busy fails.
    readings = []
    for _ in range(20):
        spin(3 * BUSY_WINDOW_S)
        readings.append(busy.read())
        if readings[-1]:
            break
    assert readings[-1], readings
    # Within one window the reading is not taken again: it stays what it was.
    assert busy.read()
    time.sleep(3 * BUSY_WINDOW_S)
    assert not busy.read()


def test_a_busy_event_loop_waits_for_companions_up_to_the_busy_delay(executor):
    """The same two requests 50 ms apart: with the loop idle they leave alone (the queue delay is 1 us); with
    the loop busy (this coroutine computing on it just before) they share one call, the first having waited
    up to busy_queue_delay_us for the expected companions."""
    model = Model()
    busy_delay_s = 1.0
    batcher = make(
        model,
        executor,
        max_batch_size=8,
        max_queue_delay_us=1,
        busy_queue_delay_us=int(busy_delay_s * 1e6),
    )

    async def two_requests(computing_s):
        model.calls.clear()
        if computing_s:
            spin(
                computing_s
            )  # the next reading's window: this, and the few ms since the last reading
        else:
            await asyncio.sleep(
                0.3
            )  # the loop idle: whatever came before weighs little in the next reading
        first = asyncio.create_task(batcher.submit(sample(1), ["double"]))
        await asyncio.sleep(0.05)
        second = asyncio.create_task(batcher.submit(sample(2), ["double"]))
        results = await asyncio.gather(first, second)
        np.testing.assert_array_equal(results[1]["double"], sample(4))
        return list(model.calls)

    async def scenario():
        for _ in range(3):
            await concurrent_traffic(batcher, model, 8)
        assert batcher.concurrency > 3  # companions are expected
        before = batcher.busy_loop_batches
        idle = await two_requests(0)
        assert batcher.busy_loop_batches == before
        for _ in range(10):  # as above: another process may keep the loop's thread off the CPU
            busy = await two_requests(1.0)
            if busy == [2]:
                return idle, busy
        return idle, busy

    idle, busy = asyncio.run(scenario())
    assert idle == [1, 1] and busy == [2], (idle, busy)
    assert batcher.busy_loop_batches >= 1


def test_without_delay_a_request_runs_at_once(executor):
    model = Model()
    batcher = make(model, executor, max_batch_size=8, max_queue_delay_us=0)
    asyncio.run(batcher.submit(sample(1), ["double"]))
    assert model.calls == [1]


def test_a_failed_call_fails_only_its_own_batch(executor):
    model = Model()
    model.fail_when = 7.0
    batcher = make(model, executor, max_batch_size=2)

    async def scenario():
        held = await occupy(batcher, model)
        tasks = [asyncio.create_task(batcher.submit(sample(v), ["double"])) for v in (6, 7, 8, 9)]
        await wait_until(lambda: batcher.queued == 4)
        model.gate.set()
        await held
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(scenario())
    assert model.calls == [1, 2, 2]
    assert isinstance(results[0], RuntimeError) and isinstance(results[1], RuntimeError)
    np.testing.assert_array_equal(results[2]["double"], sample(16))
    np.testing.assert_array_equal(results[3]["double"], sample(18))


def test_a_full_queue_refuses_at_once(executor):
    model = Model()
    batcher = make(model, executor, max_batch_size=1, max_queue_size=2)

    async def scenario():
        held = await occupy(batcher, model)
        queued = [asyncio.create_task(batcher.submit(sample(v), ["double"])) for v in (1, 2)]
        await wait_until(lambda: batcher.queued == 2)
        with pytest.raises(QueueFull, match=r"queue full: 2 requests waiting \(limit 2\)"):
            await batcher.submit(sample(3), ["double"])
        model.gate.set()
        await asyncio.gather(held, *queued)

    asyncio.run(scenario())
    assert model.calls == [1, 1, 1]


def test_an_expired_request_is_dropped_before_compute(executor):
    model = Model()
    batcher = make(model, executor, max_batch_size=4)

    async def scenario():
        held = await occupy(batcher, model)
        expiring = asyncio.create_task(batcher.submit(sample(5), ["double"], timeout_s=0.01))
        patient = asyncio.create_task(batcher.submit(sample(6), ["double"], timeout_s=30))
        await asyncio.sleep(0.05)
        model.gate.set()
        await held
        with pytest.raises(DeadlineExceeded, match="not run"):
            await expiring
        return await patient

    result = asyncio.run(scenario())
    assert model.calls == [1, 1]  # the expired request never reached the model
    np.testing.assert_array_equal(result["double"], sample(12))


def test_batching_off_runs_every_request_alone(executor):
    model = Model()
    batcher = make(model, executor, max_batch_size=8, coalesce=False)

    async def scenario():
        model.gate.clear()
        tasks = [asyncio.create_task(batcher.submit(sample(v), ["double"])) for v in range(5)]
        await wait_until(lambda: model.entered == 1 and batcher.queued == 4)
        model.gate.set()
        return await asyncio.gather(*tasks)

    results = asyncio.run(scenario())
    assert model.calls == [1, 1, 1, 1, 1]
    for value, result in enumerate(results):
        np.testing.assert_array_equal(result["double"], sample(2 * value))


def test_a_cancelled_request_does_not_disturb_the_others(executor):
    model = Model()
    batcher = make(model, executor, max_batch_size=4)

    async def scenario():
        held = await occupy(batcher, model)
        cancelled = asyncio.create_task(batcher.submit(sample(1), ["double"]))
        kept = asyncio.create_task(batcher.submit(sample(2), ["double"]))
        await wait_until(lambda: batcher.queued == 2)
        cancelled.cancel()
        model.gate.set()
        await held
        return await kept

    result = asyncio.run(scenario())
    np.testing.assert_array_equal(result["double"], sample(4))
    assert model.calls == [1, 1]


class Sleeper(Model):
    """The same model, taking ``seconds`` per call (a compute-bound model, as far as the batcher can tell)."""

    def __init__(self, seconds):
        super().__init__()
        self.seconds = seconds
        self.threads: list[str] = []

    def __call__(self, images, outputs):
        self.threads.append(threading.current_thread().name)
        time.sleep(self.seconds)
        return super().__call__(images, outputs)


def test_a_call_measured_below_the_budget_runs_on_the_event_loop(executor):
    model = Sleeper(0.0)
    batcher = make(model, executor, max_batch_size=8, inline_compute_us=50_000)

    async def scenario():
        for value in range(4):
            await batcher.submit(sample(value), ["double"])
        return threading.current_thread().name

    loop_thread = asyncio.run(scenario())
    # The first call of a batch size is unmeasured: on a model thread. Then it is known to be short.
    assert model.threads[0].startswith("bnserve-model") and model.threads[1:] == [loop_thread] * 3
    assert batcher.inline_calls == 3


def test_a_call_measured_above_the_budget_stays_on_the_model_threads(executor):
    model = Sleeper(0.02)
    batcher = make(model, executor, max_batch_size=8, inline_compute_us=5_000)

    async def scenario():
        for value in range(3):
            await batcher.submit(sample(value), ["double"])

    asyncio.run(scenario())
    assert (
        all(name.startswith("bnserve-model") for name in model.threads)
        and batcher.inline_calls == 0
    )
    assert batcher.compute_times.expected_ns(1) >= 0.02e9


def test_inline_execution_can_be_turned_off_and_is_seeded_per_batch_size(executor):
    from bnserve.server.batching import ComputeTimes

    model = Sleeper(0.0)
    batcher = make(model, executor, max_batch_size=8, inline_compute_us=0)
    asyncio.run(batcher.submit(sample(1), ["double"]))
    asyncio.run(batcher.submit(sample(1), ["double"]))
    assert batcher.inline_calls == 0
    times = ComputeTimes({1: 1_000, 64: 9_000_000})
    assert (
        times.expected_ns(1) == 1_000
        and times.expected_ns(40) == 9_000_000
        and times.expected_ns(8) is None
    )
    times.record(1, 5_000)
    assert times.expected_ns(1) == 2_000  # 1000 + (5000 - 1000) / 4


LONG_CALL_NS = BatchingOptions().long_call_us * 1000
"""The default threshold of a long call."""


class SlowModel:
    """y = 2x, taking ``seconds`` a call (time.sleep releases the GIL, as a model runtime does); records
    every call's batch size."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.calls: list[int] = []

    def __call__(self, images, outputs):
        self.calls.append(len(images))
        time.sleep(self.seconds)
        return {"double": images * 2, "total": images.reshape(len(images), -1).sum(axis=1)}


async def closed_loop(batcher, clients: int, requests_each: int, think_s: float = 0.0) -> None:
    """``clients`` clients, each sending its next request ``think_s`` after its answer is back (the network
    and the client's own work); checks every answer."""

    async def client(index):
        for request in range(requests_each):
            value = float(index * 1000 + request)
            result = await batcher.submit(sample(value), ["double"])
            np.testing.assert_array_equal(result["double"], sample(2 * value))
            await asyncio.sleep(think_s)

    await asyncio.gather(*(client(i) for i in range(clients)))


def test_a_long_call_regroups_with_the_requests_its_answers_bring_back(executor):
    # Without regrouping, 8 closed-loop clients on one instance settle into two alternating batches (the
    # queued part runs while the answered part comes back): e.g. 1 and 7, or 4 and 4, never 8.
    # The delay is below the call's time, so that it alone cannot gather a whole batch. After a full batch
    # (its queue empty) the next one waits up to REGROUP_WAIT_SHARE of the call (3 ms) for all 8: within
    # the 1 ms delay alone, a host that answers and resubmits 8 clients more slowly got 8, 6, 8, 4, 8, 5.
    model = SlowModel(seconds=12 * LONG_CALL_NS / 1e9)
    batcher = make(model, executor, max_batch_size=8, max_queue_delay_us=1000)
    asyncio.run(closed_loop(batcher, clients=8, requests_each=12, think_s=0.0003))
    steady = model.calls[len(model.calls) // 2 :]
    assert sum(model.calls) == 8 * 12
    assert np.median(steady) == 8, model.calls


def test_a_regroup_waits_a_share_of_the_long_call_for_answers_slower_than_the_queue_delay(executor):
    # The answered clients come back 1.2 ms later, after the 0.5 ms max_queue_delay_us: a window of the
    # queue delay alone leaves every batch short of them (1, 7, 1, 7, ...: a mean of 4). REGROUP_WAIT_SHARE
    # of the 12 ms call (3 ms) takes them in (8, 6-7, 8, ... with 2 cores; 8, 5, 8, 5 on one, where the
    # batch after a full one, its queue empty, collects without a regroup).
    from bnserve.server.batching import REGROUP_WAIT_SHARE

    call_s = 12 * LONG_CALL_NS / 1e9
    assert REGROUP_WAIT_SHARE * call_s > 2 * 0.0012
    model = SlowModel(seconds=call_s)
    batcher = make(model, executor, max_batch_size=8, max_queue_delay_us=500)
    asyncio.run(closed_loop(batcher, clients=8, requests_each=10, think_s=0.0012))
    steady = model.calls[len(model.calls) // 2 :]
    assert sum(model.calls) == 8 * 10
    assert np.mean(steady) >= 6 and 8 in steady, model.calls


def test_after_a_long_batch_that_emptied_the_queue_the_next_waits_for_the_answered_clients_too(
    executor,
):
    # Nothing was queued behind the 40 ms call of 3 rows: its answered clients come back one by one, 2 ms
    # apart, each gap 4x the 0.5 ms max_queue_delay_us. Collected by the companions estimate alone they ran
    # as 1, 1, 1 (closed-loop clients ran 8, 5, 8, 5); the batch now waits for the 3 answered rows, up to
    # REGROUP_WAIT_SHARE of the call (10 ms) from its end.
    model = SlowModel(seconds=40 * LONG_CALL_NS / 1e9)
    batcher = make(model, executor, max_batch_size=8, max_queue_delay_us=500)

    async def scenario():
        await asyncio.gather(*(batcher.submit(sample(v), ["double"]) for v in range(4)))
        assert model.calls == [1, 3]  # the first alone (nobody was expected), then the other three

        async def client(value, gap_s):
            await asyncio.sleep(gap_s)
            result = await batcher.submit(sample(value), ["double"])
            np.testing.assert_array_equal(result["double"], sample(2 * value))

        await asyncio.gather(*(client(v, 0.002 * v) for v in range(3)))

    asyncio.run(scenario())
    assert model.calls == [1, 3, 3]


def test_the_wait_after_a_long_batch_that_emptied_the_queue_ends_with_its_share_of_the_call(
    executor,
):
    # The answered clients need not come back (a burst): the rows beyond the companions estimate are waited
    # for only within REGROUP_WAIT_SHARE of the call, never for the whole max_queue_delay_us (5 s here).
    model = SlowModel(seconds=12 * LONG_CALL_NS / 1e9)
    batcher = make(model, executor, max_batch_size=8, max_queue_delay_us=5_000_000)

    async def scenario():
        await asyncio.gather(*(batcher.submit(sample(v), ["double"]) for v in range(8)))
        burst = 1 + round(batcher.concurrency)
        started = time.monotonic()
        await asyncio.gather(*(batcher.submit(sample(v), ["double"]) for v in range(burst)))
        return burst, time.monotonic() - started

    burst, elapsed = asyncio.run(scenario())
    assert model.calls[-1] == burst < model.calls[-2], model.calls
    assert elapsed < 5.0


def test_a_short_call_does_not_regroup(executor):
    # The same clients on a model far below LONG_CALL_NS: batches follow the companions estimate alone
    # and never wait for a full max_queue_delay after their oldest request (50 ms here) to regroup.
    # (The long-call handling's other parts are tested below.)
    model = SlowModel(seconds=0.0)
    batcher = make(model, executor, max_batch_size=8, max_queue_delay_us=50_000)
    started = time.perf_counter()
    asyncio.run(closed_loop(batcher, clients=8, requests_each=12))
    assert sum(model.calls) == 8 * 12
    assert batcher.early_starts == 0
    # Timing is not the claim (tests do not time), but waits of 50 ms per batch would show: a bound of
    # the 96 requests' worth of such waits, which a hang guard cannot mistake.
    assert time.perf_counter() - started < len(model.calls) * 0.05


@pytest.mark.parametrize("long_call_us", [BatchingOptions().long_call_us, 0])
def test_a_long_call_hands_its_instance_to_the_next_batch_before_answering(executor, long_call_us):
    model = SlowModel(seconds=2 * LONG_CALL_NS / 1e9)
    batcher = make(model, executor, max_batch_size=8, coalesce=False, long_call_us=long_call_us)

    async def scenario():
        tasks = [asyncio.create_task(batcher.submit(sample(v), ["double"])) for v in range(5)]
        return await asyncio.gather(*tasks)

    results = asyncio.run(scenario())
    assert model.calls == [1, 1, 1, 1, 1]
    # The first call came through submit()'s direct path or the dispatcher; each later one was started by
    # the call before it, as soon as that call returned (long_call_us 0: by the dispatcher).
    assert batcher.early_starts == (4 if long_call_us else 0)
    for value, result in enumerate(results):
        np.testing.assert_array_equal(result["double"], sample(2 * value))


def test_the_hand_over_returns_once_a_model_thread_has_the_call():
    threads = ModelThreads(1)
    try:

        async def scenario():
            gate = threading.Event()
            first = threads.submit(gate.wait, 10, handover_s=10.0)
            assert threads._jobs.empty()  # taken by the model thread before submit() returned
            # The only thread is busy: the hand-over waits at most handover_s, then leaves the call queued.
            began = time.perf_counter()
            second = threads.submit(lambda: "second", handover_s=0.05)
            waited = time.perf_counter() - began
            assert not threads._jobs.empty()
            gate.set()
            return await first, await second, waited

        first, second, waited = asyncio.run(scenario())
        assert (first, second) == (True, "second")
        assert 0.04 <= waited < 5.0
    finally:
        threads.shutdown()
