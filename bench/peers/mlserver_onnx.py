"""Seldon MLServer runtime serving model.onnx with ONNX Runtime (used with adaptive batching on).

MLServer loads this class from model-settings.json ("implementation": "mlserver_onnx.OnnxRuntime");
bench/peers.py writes that file and settings.json and starts `mlserver start DIR` in its own venv.
"""

import numpy as np
import onnxruntime
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from peer_threads import session_options

OUTPUTS = ["logits", "probabilities"]


class OnnxRuntime(MLModel):
    async def load(self) -> bool:
        self.session = onnxruntime.InferenceSession(
            self.settings.parameters.uri, session_options(), providers=["CPUExecutionProvider"]
        )
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        images = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32, copy=False)
        results = self.session.run(OUTPUTS, {"images": images})
        return InferenceResponse(
            model_name=self.name,
            id=payload.id,
            outputs=[
                NumpyCodec.encode_output(name, array) for name, array in zip(OUTPUTS, results)
            ],
        )
