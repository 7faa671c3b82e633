"""KServe's ModelServer (the `kserve` Python SDK) serving model.onnx with ONNX Runtime: a small sync predict.

    python kserve_onnx.py --model-dir REPO/NAME/VERSION --name NAME --grpc-port P --http-port Q

Runs in its own virtual environment (bench/peers.py builds it); prints "listening on 127.0.0.1:P" once
the model is loaded, for the benchmark's start-up check.
"""

import argparse
import sys

import numpy as np
import onnxruntime
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer
from peer_threads import session_options

OUTPUTS = ["logits", "probabilities"]


class OnnxModel(Model):
    def __init__(self, name: str, model_dir: str):
        super().__init__(name)
        self.model_dir = model_dir
        self.load()

    def load(self) -> bool:
        self.session = onnxruntime.InferenceSession(
            f"{self.model_dir}/model.onnx", session_options(), providers=["CPUExecutionProvider"]
        )
        self.ready = True
        return self.ready

    def predict(
        self, payload: InferRequest | dict, headers=None, response_headers=None
    ) -> InferResponse | dict:
        if isinstance(
            payload, dict
        ):  # KServe's v1 protocol: TensorFlow Serving's REST :predict, row format
            images = np.asarray(
                [row["images"] if isinstance(row, dict) else row for row in payload["instances"]],
                np.float32,
            )
            logits, probabilities = self.session.run(OUTPUTS, {"images": images})
            return {
                "predictions": [
                    {"logits": row, "probabilities": p}
                    for row, p in zip(logits.tolist(), probabilities.tolist())
                ]
            }
        images = payload.inputs[0].as_numpy().astype(np.float32, copy=False)
        results = self.session.run(OUTPUTS, {"images": images})
        outputs = []
        for name, array in zip(OUTPUTS, results):
            output = InferOutput(name=name, shape=list(array.shape), datatype="FP32")
            output.set_data_from_numpy(array, binary_data=True)
            outputs.append(output)
        # A REST request without "id" has id None, which KServe's response model refuses.
        return InferResponse(
            response_id=payload.id or "", model_name=self.name, infer_outputs=outputs
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    args = parser.parse_args()
    model = OnnxModel(args.name, args.model_dir)
    print(f"listening on 127.0.0.1:{args.grpc_port}", file=sys.stderr, flush=True)
    ModelServer(
        grpc_port=args.grpc_port, http_port=args.http_port, workers=1, enable_latency_logging=False
    ).start([model])
