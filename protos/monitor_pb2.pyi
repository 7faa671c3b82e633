from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DriftRequest(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class LayerDrift(_message.Message):
    __slots__ = ("layer", "name", "threshold", "has_score", "score", "alarm", "history")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    HAS_SCORE_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    ALARM_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    layer: int
    name: str
    threshold: float
    has_score: bool
    score: float
    alarm: bool
    history: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, layer: _Optional[int] = ..., name: _Optional[str] = ..., threshold: _Optional[float] = ..., has_score: _Optional[bool] = ..., score: _Optional[float] = ..., alarm: _Optional[bool] = ..., history: _Optional[_Iterable[float]] = ...) -> None: ...

class DriftResponse(_message.Message):
    __slots__ = ("name", "version", "monitored", "reason", "window", "calibrated_window", "sample_rate", "windows", "samples_in_window", "dropped", "alarm", "layers", "skipped", "max_share")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MONITORED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    CALIBRATED_WINDOW_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    WINDOWS_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_IN_WINDOW_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    ALARM_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    MAX_SHARE_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    monitored: bool
    reason: str
    window: int
    calibrated_window: int
    sample_rate: float
    windows: int
    samples_in_window: int
    dropped: int
    alarm: bool
    layers: _containers.RepeatedCompositeFieldContainer[LayerDrift]
    skipped: int
    max_share: float
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., monitored: _Optional[bool] = ..., reason: _Optional[str] = ..., window: _Optional[int] = ..., calibrated_window: _Optional[int] = ..., sample_rate: _Optional[float] = ..., windows: _Optional[int] = ..., samples_in_window: _Optional[int] = ..., dropped: _Optional[int] = ..., alarm: _Optional[bool] = ..., layers: _Optional[_Iterable[_Union[LayerDrift, _Mapping]]] = ..., skipped: _Optional[int] = ..., max_share: _Optional[float] = ...) -> None: ...
