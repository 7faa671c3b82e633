"""The serving stack's ceiling: grpc.aio answering ModelInfer with a constant response.

Same gRPC stack and protobuf messages as bnserve (the request is parsed, a prepared response is
sent), no model, no validation, no batching. With ``--onnx MODEL`` each request also runs MODEL once
on its own input (ONNX Runtime, one thread, on the event loop): the floor of any server that calls
the model once a request, whatever else it does.

    python bench/noop_server.py --port 0      # logs "listening on 127.0.0.1:PORT"
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

import grpc
import numpy as np

from protos import inference_pb2 as pb


async def serve(port: int, onnx: str | None = None) -> None:
    logits = np.zeros((1, 10), np.float32)
    response = pb.ModelInferResponse(
        model_name="digits", model_version="1",
        outputs=[pb.ModelInferResponse.InferOutputTensor(name=name, datatype="FP32", shape=logits.shape)
                 for name in ("logits", "probabilities")],
        raw_output_contents=[logits.tobytes(), logits.tobytes()])

    async def constant(request, context):
        return response

    model_infer = constant
    if onnx:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        session = onnxruntime.InferenceSession(onnx, options, providers=["CPUExecutionProvider"])
        row_shape = [int(d) for d in session.get_inputs()[0].shape[1:]]

        async def with_model_call(request, context):
            images = np.frombuffer(request.raw_input_contents[0], np.float32).reshape([-1, *row_shape])
            session.run(["logits", "probabilities"], {"images": images})
            return response

        model_infer = with_model_call

    handler = grpc.method_handlers_generic_handler("inference.GRPCInferenceService", {
        "ModelInfer": grpc.unary_unary_rpc_method_handler(
            model_infer, request_deserializer=pb.ModelInferRequest.FromString,
            response_serializer=pb.ModelInferResponse.SerializeToString)})
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
    parser.add_argument("--onnx", help="also run this model.onnx once on each request's input")
    arguments = parser.parse_args()
    asyncio.run(serve(arguments.port, arguments.onnx))
