"""inference.GRPCInferenceService: KServe v2 / Open Inference Protocol plus Triton's extensions."""

from __future__ import annotations

import asyncio
import functools
import os

import grpc

from bnserve.protos import inference_pb2 as pb
from bnserve.protos import inference_pb2_grpc
from bnserve.server.controller import RepositoryController
from bnserve.server.dataplane import (
    DataPlane,
    InferenceRequest,
    InferenceResponse,
    InferInput,
)
from bnserve.server.errors import InvalidInput, ServingError
from bnserve.server.grpc_errors import grpc_errors
from bnserve.server.settings import STREAM_WINDOW
from bnserve.server.tensors import (
    V2_CONTENTS_FIELD,
    V2_TO_NUMPY,
    array_from_raw,
    array_from_values,
    bytes_from_raw,
    object_array,
    raw_contents,
)
from bnserve.server.tracing import grpc_carrier
from bnserve.server.triton_documents import to_model_config, to_model_statistics


def to_infer_request(
    request: pb.ModelInferRequest, timeout_s: float | None = None
) -> InferenceRequest:
    """Protobuf -> domain; raw contents are viewed with np.frombuffer, typed contents converted once."""
    raw = request.raw_input_contents
    if (
        len(raw) == 1 and len(request.inputs) == 1
    ):  # the usual request: one raw input, checked the same way
        tensor = request.inputs[0]
        dtype = V2_TO_NUMPY.get(tensor.datatype)
        if dtype is not None and not tensor.HasField("contents"):
            data = array_from_raw(raw[0], dtype, list(tensor.shape), "raw_input_contents[0]")
            names, counts = requested_outputs(request) if request.outputs else ((), ())
            return InferenceRequest(
                request.model_name,
                request.model_version,
                request.id,
                (InferInput(tensor.name, tensor.datatype, data),),
                names,
                timeout_s,
                counts,
            )
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(
            f"raw_input_contents: {len(raw)} entries for {len(request.inputs)} inputs; "
            "expected one per input"
        )
    inputs = []
    for position, tensor in enumerate(request.inputs):
        field = f"inputs[{position}]"
        dtype = V2_TO_NUMPY.get(tensor.datatype)
        if tensor.datatype == "BYTES":
            shape = list(tensor.shape)
            if raw and tensor.contents.ByteSize():
                raise InvalidInput(
                    f"{field}.contents: the request carries raw_input_contents too; send each input "
                    "either raw or typed, not both"
                )
            data = (
                bytes_from_raw(raw[position], shape, f"raw_input_contents[{position}]")
                if raw
                else object_array(
                    list(tensor.contents.bytes_contents), shape, f"{field}.contents.bytes_contents"
                )
            )
            inputs.append(InferInput(tensor.name, "BYTES", data))
            continue
        if dtype is None:
            raise InvalidInput(
                f"{field}.datatype: unknown datatype {tensor.datatype!r}; expected one of "
                f"{', '.join(V2_TO_NUMPY)}, BYTES"
            )
        shape = list(tensor.shape)
        if raw and tensor.HasField("contents") and tensor.contents.ByteSize():
            raise InvalidInput(
                f"{field}.contents: the request carries raw_input_contents too; send each input "
                "either raw or typed, not both"
            )
        if raw:
            data = array_from_raw(raw[position], dtype, shape, f"raw_input_contents[{position}]")
        else:
            values = getattr(
                tensor.contents, V2_CONTENTS_FIELD.get(tensor.datatype, "bytes_contents")
            )
            data = array_from_values(values, dtype, shape, f"{field}.contents")
        inputs.append(InferInput(tensor.name, tensor.datatype, data))
    names, counts = requested_outputs(request)
    return InferenceRequest(
        request.model_name,
        request.model_version,
        request.id,
        tuple(inputs),
        names,
        timeout_s,
        counts,
    )


def from_infer_response(response: InferenceResponse) -> pb.ModelInferResponse:
    return pb.ModelInferResponse(
        model_name=response.model_name,
        model_version=response.model_version,
        id=response.id,
        outputs=[
            pb.ModelInferResponse.InferOutputTensor(
                name=o.name, datatype=o.datatype, shape=o.data.shape
            )
            for o in response.outputs
        ],
        raw_output_contents=[raw_contents(o) for o in response.outputs],
    )


def requested_outputs(request: pb.ModelInferRequest) -> tuple[tuple[str, ...], tuple]:
    """The requested output names and (name, N) for those asking for the classification extension
    (``parameters["classification"].int64_param``); shared memory is refused with it, as Triton does."""
    names, counts = [], []
    for position, output in enumerate(request.outputs):
        names.append(output.name)
        if "classification" not in output.parameters:
            continue
        field = f"outputs[{position}].parameters.classification"
        parameter = output.parameters["classification"]
        if parameter.WhichOneof("parameter_choice") != "int64_param":
            raise InvalidInput(f"{field}: expected an int64_param class count")
        if any(key.startswith("shared_memory") for key in output.parameters):
            raise InvalidInput(
                f"{field}: cannot be combined with shared memory; the classification extension "
                "returns strings in the response"
            )
        counts.append((output.name, parameter.int64_param))
    return tuple(names), tuple(counts)


HANDLER_FACTORIES = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


@functools.lru_cache(maxsize=1024)
def response_head(
    model_name: str, model_version: str, outputs: tuple[tuple[str, str, tuple[int, ...]], ...]
) -> bytes:
    """The serialized ModelInferResponse fields that repeat across requests: names and output tensors (bounded
    set: outputs x batch sizes per version)."""
    return pb.ModelInferResponse(
        model_name=model_name,
        model_version=model_version,
        outputs=[
            pb.ModelInferResponse.InferOutputTensor(name=name, datatype=datatype, shape=shape)
            for name, datatype, shape in outputs
        ],
    ).SerializeToString()


def encode_infer_response(response: InferenceResponse) -> bytes:
    """The serialized from_infer_response(response): the cached head, then id and raw contents. Protobuf parses
    two concatenated messages as one (repeated fields append), so only the per-request part is encoded here."""
    head = response_head(
        response.model_name,
        response.model_version,
        tuple((o.name, o.datatype, o.data.shape) for o in response.outputs),
    )
    return (
        head
        + pb.ModelInferResponse(
            id=response.id, raw_output_contents=[raw_contents(o) for o in response.outputs]
        ).SerializeToString()
    )


def add_inference_service(servicer: "InferenceServicer", server) -> None:
    """inference.GRPCInferenceService on ``server``, as the generated add_..._to_server registers it except that
    ModelInfer answers bytes already serialized (encode_infer_response), and with generic handlers only (see
    GenericHandlersOnly)."""
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    handlers = {}
    for method in service.methods:
        request_class, response_class = (
            getattr(pb, method.input_type.name),
            getattr(pb, method.output_type.name),
        )
        factory = HANDLER_FACTORIES[method.client_streaming, method.server_streaming]
        handlers[method.name] = factory(
            getattr(servicer, method.name),
            request_deserializer=request_class.FromString,
            response_serializer=None
            if method.name == "ModelInfer"
            else response_class.SerializeToString,
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )


class GenericHandlersOnly:
    """A grpc.aio server as the generated ``add_*Servicer_to_server`` functions see it, taking their generic
    handlers and dropping their registered-method ones (which serve the same methods).

    grpc.aio keeps one pending request-call task per registered method, and for every call that arrives it
    awaits all of them together (asyncio.wait: a done-callback added and removed on each). With bnserve's 17
    registered methods that was ~140 more Python calls a request: 618 function calls a ModelInfer request,
    478 with generic handlers only, against 400 for the no-op + one model call server (cProfile on the loop
    thread, h2load at concurrency 1)."""

    def __init__(self, server: grpc.aio.Server):
        self.server = server

    def add_generic_rpc_handlers(self, handlers) -> None:
        self.server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(self, service_name: str, handlers) -> None:
        pass


def tensor_metadata(spec) -> pb.ModelMetadataResponse.TensorMetadata:
    return pb.ModelMetadataResponse.TensorMetadata(
        name=spec.name, datatype=spec.datatype, shape=spec.shape
    )


class InferenceServicer(inference_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, dataplane: DataPlane, controller: RepositoryController):
        self.dataplane = dataplane
        self.controller = controller

    @grpc_errors
    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    @grpc_errors
    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.dataplane.server_ready())

    @grpc_errors
    async def ModelReady(self, request, context):
        return pb.ModelReadyResponse(
            ready=self.dataplane.model_ready(request.name, request.version)
        )

    @grpc_errors
    async def ServerMetadata(self, request, context):
        # Which process answered: with --workers N the kernel spreads connections over N processes.
        context.set_trailing_metadata((("bnserve-worker-pid", str(os.getpid())),))
        name, version, extensions = self.dataplane.server_metadata()
        return pb.ServerMetadataResponse(name=name, version=version, extensions=extensions)

    @grpc_errors
    async def ModelMetadata(self, request, context):
        metadata = self.dataplane.model_metadata(request.name, request.version)
        return pb.ModelMetadataResponse(
            name=metadata.name,
            versions=metadata.versions,
            platform=metadata.platform,
            inputs=[tensor_metadata(t) for t in metadata.inputs],
            outputs=[tensor_metadata(t) for t in metadata.outputs],
        )

    async def _infer(
        self, request: pb.ModelInferRequest, timeout_s: float | None, trace=None
    ) -> InferenceResponse:
        with self.dataplane.admission(request.model_name, request.model_version):
            domain = to_infer_request(request, timeout_s)
        return await self.dataplane.infer(domain, "grpc", trace)

    @grpc_errors
    async def ModelInfer(self, request, context):
        """Answers serialized bytes (see add_inference_service)."""
        if self.dataplane.tracing is None:
            return encode_infer_response(await self._infer(request, context.time_remaining()))
        trace = self.dataplane.tracing.begin(grpc_carrier(context), "grpc")
        if trace is None:  # not sampled
            return encode_infer_response(await self._infer(request, context.time_remaining()))
        try:
            answer = encode_infer_response(
                await self._infer(request, context.time_remaining(), trace)
            )
        except BaseException as exc:
            trace.finish(exc)
            raise
        trace.finish()
        return answer

    async def ModelStreamInfer(self, request_iterator, context):
        """Requests of a stream run concurrently (and batch with everything else); each answer, or the
        reason its request failed (with the request's id), is sent as soon as it is ready.

        Flow control: at most STREAM_WINDOW requests of one stream are read and not yet answered to the
        client; beyond that the server stops reading, so a client that writes and never reads is held back
        by HTTP/2 flow control instead of growing the server's memory.
        """
        answers: asyncio.Queue = asyncio.Queue()
        window = asyncio.Semaphore(STREAM_WINDOW)

        async def answer(request):
            try:
                answers.put_nowait(
                    pb.ModelStreamInferResponse(
                        infer_response=from_infer_response(await self._infer(request, None))
                    )
                )
            except Exception as exc:  # one failed request never ends the stream
                reason = (
                    f"{exc.code.name}: {exc.message}"
                    if isinstance(exc, ServingError)
                    else f"INTERNAL: {exc}"
                )
                answers.put_nowait(
                    pb.ModelStreamInferResponse(
                        error_message=reason,
                        infer_response=pb.ModelInferResponse(
                            model_name=request.model_name, id=request.id
                        ),
                    )
                )

        async def read_all():
            running: set[asyncio.Future] = set()
            requests = request_iterator.__aiter__()
            while True:
                await window.acquire()  # released when an answer has been handed to the client
                try:
                    request = await requests.__anext__()
                except StopAsyncIteration:
                    break
                task = asyncio.ensure_future(answer(request))
                running.add(task)
                task.add_done_callback(running.discard)
                del request, task
            await asyncio.gather(*running)
            answers.put_nowait(None)

        reader = asyncio.ensure_future(read_all())
        try:
            while (response := await answers.get()) is not None:
                yield response
                window.release()
        finally:
            reader.cancel()

    @grpc_errors
    async def ModelConfig(self, request, context):
        model = self.dataplane.model(request.name, request.version)
        return pb.ModelConfigResponse(config=to_model_config(model, self.dataplane.settings))

    @grpc_errors
    async def ModelStatistics(self, request, context):
        models = self.dataplane.statistics_of(request.name, request.version)
        return pb.ModelStatisticsResponse(model_stats=[to_model_statistics(m) for m in models])

    @grpc_errors
    async def RepositoryIndex(self, request, context):
        states = self.dataplane.index(ready_only=request.ready)
        return pb.RepositoryIndexResponse(
            models=[
                pb.RepositoryIndexResponse.ModelIndex(
                    name=s.name,
                    version=str(s.version) if s.version else "",
                    state=s.state,
                    reason=s.reason,
                )
                for s in states
            ]
        )

    @grpc_errors
    async def RepositoryModelLoad(self, request, context):
        await self.controller.load(request.model_name)
        return pb.RepositoryModelLoadResponse()

    @grpc_errors
    async def RepositoryModelUnload(self, request, context):
        await self.controller.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()
