"""tensorflow.serving.PredictionService (Predict, GetModelMetadata) and ModelService (GetModelStatus).

The messages are bnserve.tfserving.* (wire-compatible copies, see protos/tfserving.proto); the
handlers are registered on TensorFlow Serving's method paths.
"""

from __future__ import annotations

import grpc
import numpy as np
from google.protobuf.any_pb2 import Any

from bnserve.protos import tfserving_pb2 as pb
from bnserve.server.dataplane import DataPlane, InferenceRequest, InferenceResponse, InferInput
from bnserve.server.errors import InvalidInput, Unimplemented
from bnserve.server.grpc_errors import grpc_errors
from bnserve.server.tensors import (
    NUMPY_TO_TF,
    NUMPY_TO_V2,
    TF_TO_NUMPY,
    TF_VALUES_FIELD,
    array_from_raw,
    array_from_values,
    object_array,
)
from bnserve.server.tfserving_documents import (
    CLASSIFY_METHOD,
    CLASSIFY_SIGNATURE,
    CLASSIFY_SIGNATURES,
    MODEL_SERVICE,
    PREDICT_METHOD,
    PREDICTION_SERVICE,
    SIGNATURE_DEF_MAP_URL,
    SIGNATURE_NAME,
    examples_input,
    ranked_classes,
)
from bnserve.server.tracing import traced

TF_ERROR_CODES = {"OK": 0, "UNKNOWN": 2}
"""tensorflow.error.Code by name."""


def requested_version(spec: pb.ModelSpec) -> str:
    if spec.WhichOneof("version_choice") == "version_label":
        raise InvalidInput(
            f"model_spec.version_label: labels are not supported (got {spec.version_label!r}); "
            "use model_spec.version"
        )
    return str(spec.version.value) if spec.HasField("version") else ""


def check_signature(spec: pb.ModelSpec) -> None:
    if spec.signature_name not in ("", SIGNATURE_NAME):
        raise InvalidInput(
            f"model_spec.signature_name: unknown signature {spec.signature_name!r}; "
            f"expected {SIGNATURE_NAME!r}"
        )


def to_array(tensor: pb.TensorProto, field: str) -> np.ndarray:
    """A TensorProto as NumPy; DT_STRING (encoded images) as an object array of bytes."""
    shape = [dim.size for dim in tensor.tensor_shape.dim]
    if tensor.dtype == pb.DT_STRING:
        return object_array(list(tensor.string_val), shape, f"{field}.string_val")
    dtype = TF_TO_NUMPY.get(tensor.dtype)
    if dtype is None:
        raise InvalidInput(f"{field}.dtype: unsupported tensorflow.DataType {tensor.dtype}")
    if tensor.tensor_content:
        return array_from_raw(tensor.tensor_content, dtype, shape, f"{field}.tensor_content")
    return array_from_values(
        getattr(tensor, TF_VALUES_FIELD[tensor.dtype]),
        dtype,
        shape,
        f"{field}.{TF_VALUES_FIELD[tensor.dtype]}",
    )


def to_infer_request(
    request: pb.PredictRequest, timeout_s: float | None = None
) -> InferenceRequest:
    check_signature(request.model_spec)
    inputs = []
    for key in sorted(request.inputs):
        data = to_array(request.inputs[key], f"inputs[{key!r}]")
        inputs.append(InferInput(key, NUMPY_TO_V2.get(data.dtype, "BYTES"), data))
    return InferenceRequest(
        request.model_spec.name,
        requested_version(request.model_spec),
        "",
        tuple(inputs),
        tuple(request.output_filter),
        timeout_s,
    )


def example_features(example: pb.Example) -> dict[str, tuple[str, list]]:
    """feature name -> (kind, values) of one tf.Example."""
    features = {}
    for name, feature in example.features.feature.items():
        kind = feature.WhichOneof("kind")
        features[name] = (kind or "empty", list(getattr(feature, kind).value) if kind else [])
    return features


def classify_examples(request: pb.ClassificationRequest) -> tuple[str, list]:
    """The request's examples (a context's features join each example's, as TensorFlow Serving merges them)."""
    if request.model_spec.signature_name not in CLASSIFY_SIGNATURES:
        raise InvalidInput(
            f"model_spec.signature_name: unknown signature {request.model_spec.signature_name!r}; "
            f"expected {CLASSIFY_SIGNATURE!r} or {SIGNATURE_NAME!r}"
        )
    kind = request.input.WhichOneof("kind")
    if kind == "example_list":
        return "input.example_list.examples", [
            example_features(e) for e in request.input.example_list.examples
        ]
    if kind == "example_list_with_context":
        listed = request.input.example_list_with_context
        context = example_features(listed.context)
        return "input.example_list_with_context.examples", [
            context | example_features(e) for e in listed.examples
        ]
    raise InvalidInput("input: empty; expected example_list or example_list_with_context")


def to_tensor_proto(data: np.ndarray) -> pb.TensorProto:
    return pb.TensorProto(
        dtype=NUMPY_TO_TF[data.dtype],
        tensor_content=data.tobytes(),
        tensor_shape=pb.TensorShapeProto(dim=[pb.TensorShapeProto.Dim(size=d) for d in data.shape]),
    )


def from_infer_response(response: InferenceResponse) -> pb.PredictResponse:
    spec = pb.ModelSpec(name=response.model_name, signature_name=SIGNATURE_NAME)
    spec.version.value = int(response.model_version)
    return pb.PredictResponse(
        model_spec=spec, outputs={o.name: to_tensor_proto(o.data) for o in response.outputs}
    )


def shape_proto(*dims: int) -> pb.TensorShapeProto:
    return pb.TensorShapeProto(dim=[pb.TensorShapeProto.Dim(size=d) for d in dims])


def tensor_info(spec) -> pb.TensorInfo:
    dims = [pb.TensorShapeProto.Dim(size=d) for d in spec.shape]
    return pb.TensorInfo(
        name=f"{spec.name}:0",
        dtype=pb.DT_STRING if spec.datatype == "BYTES" else pb.DT_FLOAT,
        tensor_shape=pb.TensorShapeProto(dim=dims),
    )


class TensorFlowServingServicer:
    def __init__(self, dataplane: DataPlane):
        self.dataplane = dataplane

    @grpc_errors
    @traced("grpc")
    async def Predict(self, request, context):
        with self.dataplane.admission(request.model_spec.name, ""):
            domain = to_infer_request(request, context.time_remaining())
        return from_infer_response(await self.dataplane.infer(domain))

    @grpc_errors
    @traced("grpc")
    async def Classify(self, request, context):
        version = requested_version(request.model_spec)
        with self.dataplane.admission(request.model_spec.name, version):
            field, examples = classify_examples(request)
            model = self.dataplane.model(request.model_spec.name, version)
            domain = InferenceRequest(
                model.name,
                str(model.version),
                "",
                (InferInput(*examples_input(examples, model.input, field)),),
                ("probabilities",),
                context.time_remaining(),
            )
        response = await self.dataplane.infer(domain)
        ranked = ranked_classes(response.outputs[0].data, model.manifest.class_labels)
        spec = pb.ModelSpec(name=response.model_name, signature_name=CLASSIFY_SIGNATURE)
        spec.version.value = int(response.model_version)
        return pb.ClassificationResponse(
            model_spec=spec,
            result=pb.ClassificationResult(
                classifications=[
                    pb.Classifications(
                        classes=[pb.Class(label=label, score=score) for label, score in row]
                    )
                    for row in ranked
                ]
            ),
        )

    @grpc_errors
    async def Regress(self, request, context):
        raise Unimplemented(
            "Regress: bnserve serves classifiers (logits and probabilities over class labels); "
            "use Classify or Predict"
        )

    @grpc_errors
    async def GetModelMetadata(self, request, context):
        check_signature(request.model_spec)
        fields = list(request.metadata_field)
        if fields != ["signature_def"]:
            raise InvalidInput(
                f"metadata_field: got {fields}, expected ['signature_def'] (the only one served)"
            )
        model = self.dataplane.model(request.model_spec.name, requested_version(request.model_spec))
        signature = pb.SignatureDef(
            inputs={spec.name: tensor_info(spec) for spec in model.inputs},
            outputs={o.name: tensor_info(o) for o in model.outputs},
            method_name=PREDICT_METHOD,
        )
        classes = len(model.manifest.class_labels)
        classify = pb.SignatureDef(
            inputs={
                "inputs": pb.TensorInfo(
                    name="tf_example:0", dtype=pb.DT_STRING, tensor_shape=shape_proto(-1)
                )
            },
            outputs={
                "classes": pb.TensorInfo(
                    name="classes:0", dtype=pb.DT_STRING, tensor_shape=shape_proto(-1, classes)
                ),
                "scores": pb.TensorInfo(
                    name="scores:0", dtype=pb.DT_FLOAT, tensor_shape=shape_proto(-1, classes)
                ),
            },
            method_name=CLASSIFY_METHOD,
        )
        signatures = pb.SignatureDefMap(
            signature_def={SIGNATURE_NAME: signature, CLASSIFY_SIGNATURE: classify}
        )
        spec = pb.ModelSpec(name=model.name, signature_name=SIGNATURE_NAME)
        spec.version.value = model.version
        packed = Any(type_url=SIGNATURE_DEF_MAP_URL, value=signatures.SerializeToString())
        return pb.GetModelMetadataResponse(model_spec=spec, metadata={"signature_def": packed})

    @grpc_errors
    async def GetModelStatus(self, request, context):
        statuses = self.dataplane.tf_model_status(
            request.model_spec.name, requested_version(request.model_spec)
        )
        return pb.GetModelStatusResponse(
            model_version_status=[
                pb.ModelVersionStatus(
                    version=s.version,
                    state=pb.ModelVersionStatus.State.Value(s.state),
                    status=pb.StatusProto(
                        error_code=TF_ERROR_CODES[s.error_code], error_message=s.error_message
                    ),
                )
                for s in statuses
            ]
        )


def handlers(servicer: TensorFlowServingServicer) -> list[grpc.GenericRpcHandler]:
    def unary(method, request_type, response_type):
        return grpc.unary_unary_rpc_method_handler(
            method,
            request_deserializer=request_type.FromString,
            response_serializer=response_type.SerializeToString,
        )

    return [
        grpc.method_handlers_generic_handler(
            PREDICTION_SERVICE,
            {
                "Predict": unary(servicer.Predict, pb.PredictRequest, pb.PredictResponse),
                "GetModelMetadata": unary(
                    servicer.GetModelMetadata,
                    pb.GetModelMetadataRequest,
                    pb.GetModelMetadataResponse,
                ),
                "Classify": unary(
                    servicer.Classify, pb.ClassificationRequest, pb.ClassificationResponse
                ),
                "Regress": unary(servicer.Regress, pb.RegressionRequest, pb.ClassificationResponse),
            },
        ),
        grpc.method_handlers_generic_handler(
            MODEL_SERVICE,
            {
                "GetModelStatus": unary(
                    servicer.GetModelStatus, pb.GetModelStatusRequest, pb.GetModelStatusResponse
                ),
            },
        ),
    ]
