"""The data plane in-process, on a real repository and ONNX Runtime: checks made before any compute."""

import asyncio

import numpy as np
import pytest

from bnserve.server.dataplane import DataPlane, InferenceRequest, InferInput
from bnserve.server.errors import ResponseTooLarge
from bnserve.server.models import ModelRegistry
from bnserve.server.repository_scan import scan_repository
from bnserve.server.settings import ServerSettings


@pytest.fixture
def dataplane(serving_repository):
    def make(**settings):
        registry = ModelRegistry(ServerSettings(serving_repository, **settings))
        registry.load_all(scan_repository(serving_repository))
        return DataPlane(registry)

    return make


def request(rows, outputs=()):
    images = np.zeros((rows, 8, 8, 1), np.float32)
    return InferenceRequest(
        "other", inputs=(InferInput("images", "FP32", images),), outputs=tuple(outputs)
    )


def test_a_response_larger_than_the_message_limit_is_refused_before_compute(dataplane):
    plane = dataplane(max_message_bytes=4096)
    model = plane.model("other")

    async def scenario():
        # 2 outputs x 10 floats x 4 bytes = 80 bytes a row, plus 256 for framing: 48 rows fit in 4096, 49 do not.
        fits = await plane.infer(request(48))
        with pytest.raises(ResponseTooLarge) as caught:
            await plane.infer(request(49))
        only_logits = await plane.infer(request(49, outputs=["logits"]))  # 40 bytes a row fits
        await plane.stop()
        return fits, caught.value, only_logits

    fits, error, only_logits = asyncio.run(scenario())
    assert [o.data.shape for o in fits.outputs] == [(48, 10), (48, 10)]
    assert str(error) == (
        "outputs: the response would take 4176 bytes, more than --max-message-bytes 4096; "
        "request fewer rows or outputs"
    )
    assert only_logits.outputs[0].data.shape == (49, 10)
    # Counted as a failed request, and nothing was computed for it: two executions of 48 and 49 rows.
    assert model.statistics.inference_count == 97 and model.statistics.execution_count == 2
