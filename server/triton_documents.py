"""Triton's documents, as protobuf messages that both protocols send: ModelConfig, ModelStatistics and the
parity parameters. gRPC answers them as they are; HTTP writes them with json_codec.message_json, so the two
ports cannot describe a model differently. Neither protocol layer owns this module."""

from __future__ import annotations

from bnserve.protos import inference_pb2 as pb
from bnserve.server.models import ServedVersion
from bnserve.server.settings import ServerSettings, VersionPolicy
from bnserve.server.statistics import Duration, VersionStatistics

CONFIG_TYPES = {"FP32": pb.TYPE_FP32, "BYTES": pb.TYPE_STRING}


def to_model_config(model: ServedVersion, settings: ServerSettings) -> pb.ModelConfig:
    """Triton's convention: with max_batch_size > 0, dims leave out the batch dimension."""
    on_gpu = model.backend.device == "gpu"
    instance_kind = pb.ModelInstanceGroup.KIND_GPU if on_gpu else pb.ModelInstanceGroup.KIND_CPU
    options = settings.batching_options(model.name)
    batching = (
        pb.ModelDynamicBatching(max_queue_delay_microseconds=options.max_queue_delay_us)
        if options.coalesce
        else None
    )
    return pb.ModelConfig(
        dynamic_batching=batching,
        max_batch_size=options.max_batch_size,
        version_policy=version_policy_proto(settings.version_policy),
        name=model.name,
        platform=model.backend.platform,
        backend="onnxruntime" if model.backend.platform.startswith("onnx") else "tensorflow",
        # With image_bytes beside it each input is optional: a request sends exactly one of them.
        input=[
            pb.ModelInput(
                name=spec.name,
                data_type=CONFIG_TYPES[spec.datatype],
                format=pb.ModelInput.FORMAT_NHWC
                if spec.datatype != "BYTES"
                else pb.ModelInput.FORMAT_NONE,
                dims=spec.shape[1:] if spec.datatype != "BYTES" else [1],
                optional=len(model.inputs) > 1,
            )
            for spec in model.inputs
        ],
        output=[
            pb.ModelOutput(name=o.name, data_type=CONFIG_TYPES[o.datatype], dims=o.shape[1:])
            for o in model.outputs
        ],
        instance_group=[
            pb.ModelInstanceGroup(
                name=f"{model.name}_0",
                kind=instance_kind,
                count=options.instances,
                gpus=[0] if on_gpu else [],
            )
        ],
        parameters={
            key: pb.ModelParameter(string_value=value)
            for key, value in (parity_parameters(model) | image_parameters(model)).items()
        },
    )


def image_parameters(model: ServedVersion) -> dict[str, str]:
    """The image_bytes rule's mapping (bnserve.core.images), so that a client decoding an image itself
    (bnserve predict) computes what the server would: pixel p -> value_at_0 + p (value_at_255 -
    value_at_0) / 255 (floats as repr, exact)."""
    mapping = model.manifest.image_bytes
    if mapping is None:
        return {}
    return {
        "image_bytes_value_at_0": repr(mapping.value_at_0),
        "image_bytes_value_at_255": repr(mapping.value_at_255),
        "image_bytes_resize": mapping.resize,
    }


def parity_parameters(model: ServedVersion) -> dict[str, str]:
    """The load-time golden check, as ModelConfig parameters (Triton's string-valued map)."""
    check = model.golden
    if check is None:
        return {"parity_status": "unverified"}
    return {
        "parity_status": "verified",
        "parity_max_abs_error": f"{check.max_abs_error:.6g}",
        "parity_tolerance": f"{check.tolerance:g}",
        "parity_samples": str(check.samples),
        "parity_worst": f"output {check.output} set {check.input_set} row {check.row} column {check.column}",
        "parity_backend": f"{model.backend.platform} on {model.backend.device}",
    }


def version_policy_proto(policy: VersionPolicy) -> pb.ModelVersionPolicy:
    if policy.kind == "latest":
        return pb.ModelVersionPolicy(latest=pb.ModelVersionPolicy.Latest(num_versions=policy.count))
    if policy.kind == "all":
        return pb.ModelVersionPolicy(all=pb.ModelVersionPolicy.All())
    return pb.ModelVersionPolicy(specific=pb.ModelVersionPolicy.Specific(versions=policy.versions))


def duration(value: Duration) -> pb.StatisticDuration:
    return pb.StatisticDuration(count=value.count, ns=value.ns)


def to_model_statistics(model: ServedVersion) -> pb.ModelStatistics:
    stats: VersionStatistics = model.statistics
    return pb.ModelStatistics(
        name=model.name,
        version=str(model.version),
        last_inference=stats.last_inference_ms,
        inference_count=stats.inference_count,
        execution_count=stats.execution_count,
        inference_stats=pb.InferStatistics(
            success=duration(stats.success),
            fail=duration(stats.fail),
            queue=duration(stats.queue),
            compute_input=duration(stats.compute_input),
            compute_infer=duration(stats.compute_infer),
            compute_output=duration(stats.compute_output),
        ),
        batch_stats=[
            pb.InferBatchStatistics(
                batch_size=size,
                compute_input=duration(d.compute_input),
                compute_infer=duration(d.compute_infer),
                compute_output=duration(d.compute_output),
            )
            for size, d in sorted(stats.batches.items())
        ],
    )
