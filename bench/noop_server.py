"""The serving stack's ceiling: grpc.aio answering ModelInfer with a constant response.

Same gRPC stack and protobuf messages as bnserve (the request is parsed, a prepared response is
sent), no model, no validation, no batching. With ``--model VERSION_DIR`` each request also runs that
version's model.onnx once on its own input, through bnserve's ONNX Runtime backend with one thread (as
it runs a light model) on the event loop: the floor of any server that calls the model once a request,
whatever else it does.

    python bench/noop_server.py --port 0      # logs "listening on 127.0.0.1:PORT"
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

import grpc
import numpy as np

from bnserve.protos import inference_pb2 as pb


async def serve(port: int, version_dir: Path | None = None) -> None:
    logits = np.zeros((1, 10), np.float32)
    response = pb.ModelInferResponse(
        model_name="digits",
        model_version="1",
        outputs=[
            pb.ModelInferResponse.InferOutputTensor(name=name, datatype="FP32", shape=logits.shape)
            for name in ("logits", "probabilities")
        ],
        raw_output_contents=[logits.tobytes(), logits.tobytes()],
    )

    async def constant(request, context):
        return response

    model_infer = constant
    if version_dir is not None:
        from bnserve.server.backends.onnx import OnnxBackend

        backend = OnnxBackend(version_dir, "cpu", intra_op_threads=1)
        row_shape = backend.signature()[0][0].shape[1:]

        async def with_model_call(request, context):
            images = np.frombuffer(request.raw_input_contents[0], np.float32).reshape(
                [-1, *row_shape]
            )
            backend.run(images, ["logits", "probabilities"])
            return response

        model_infer = with_model_call

    handler = grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService",
        {
            "ModelInfer": grpc.unary_unary_rpc_method_handler(
                model_infer,
                request_deserializer=pb.ModelInferRequest.FromString,
                response_serializer=pb.ModelInferResponse.SerializeToString,
            )
        },
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"listening on 127.0.0.1:{bound}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(
        "--model",
        type=Path,
        metavar="VERSION_DIR",
        help="also run this version's model.onnx once on each request's input",
    )
    parser.add_argument(
        "--event-loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="asyncio: the floor as docs/benchmarks.md defines it; uvloop: the floor on bnserve's default loop",
    )
    arguments = parser.parse_args()
    if arguments.event_loop == "uvloop":
        import uvloop

        uvloop.run(serve(arguments.port, arguments.model))
    else:
        asyncio.run(serve(arguments.port, arguments.model))
