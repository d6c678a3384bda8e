import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from specbuilder_wire.v1 import spec_pb2 as _spec_pb2
from specbuilder_wire.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RunStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUN_STATUS_UNSPECIFIED: _ClassVar[RunStatus]
    RUN_STATUS_RUNNING: _ClassVar[RunStatus]
    RUN_STATUS_COMPLETED: _ClassVar[RunStatus]
    RUN_STATUS_DIVERGED: _ClassVar[RunStatus]
    RUN_STATUS_CANCELLED: _ClassVar[RunStatus]
    RUN_STATUS_FAILED: _ClassVar[RunStatus]
    RUN_STATUS_INTERRUPTED: _ClassVar[RunStatus]
RUN_STATUS_UNSPECIFIED: RunStatus
RUN_STATUS_RUNNING: RunStatus
RUN_STATUS_COMPLETED: RunStatus
RUN_STATUS_DIVERGED: RunStatus
RUN_STATUS_CANCELLED: RunStatus
RUN_STATUS_FAILED: RunStatus
RUN_STATUS_INTERRUPTED: RunStatus

class SpecSource(_message.Message):
    __slots__ = ("spec", "json")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    JSON_FIELD_NUMBER: _ClassVar[int]
    spec: _spec_pb2.ModelSpec
    json: str
    def __init__(self, spec: _Optional[_Union[_spec_pb2.ModelSpec, _Mapping]] = ..., json: _Optional[str] = ...) -> None: ...

class FieldViolation(_message.Message):
    __slots__ = ("path", "message", "type")
    PATH_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    path: str
    message: str
    type: str
    def __init__(self, path: _Optional[str] = ..., message: _Optional[str] = ..., type: _Optional[str] = ...) -> None: ...

class ValidateSpecRequest(_message.Message):
    __slots__ = ("spec",)
    SPEC_FIELD_NUMBER: _ClassVar[int]
    spec: SpecSource
    def __init__(self, spec: _Optional[_Union[SpecSource, _Mapping]] = ...) -> None: ...

class ValidateSpecResponse(_message.Message):
    __slots__ = ("valid", "violations", "spec", "spec_hash", "num_params", "output_shape")
    VALID_FIELD_NUMBER: _ClassVar[int]
    VIOLATIONS_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    SPEC_HASH_FIELD_NUMBER: _ClassVar[int]
    NUM_PARAMS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    valid: bool
    violations: _containers.RepeatedCompositeFieldContainer[FieldViolation]
    spec: _spec_pb2.ModelSpec
    spec_hash: str
    num_params: int
    output_shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, valid: _Optional[bool] = ..., violations: _Optional[_Iterable[_Union[FieldViolation, _Mapping]]] = ..., spec: _Optional[_Union[_spec_pb2.ModelSpec, _Mapping]] = ..., spec_hash: _Optional[str] = ..., num_params: _Optional[int] = ..., output_shape: _Optional[_Iterable[int]] = ...) -> None: ...

class CompileSpecRequest(_message.Message):
    __slots__ = ("spec", "style", "include_code")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STYLE_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_CODE_FIELD_NUMBER: _ClassVar[int]
    spec: SpecSource
    style: str
    include_code: bool
    def __init__(self, spec: _Optional[_Union[SpecSource, _Mapping]] = ..., style: _Optional[str] = ..., include_code: _Optional[bool] = ...) -> None: ...

class LayerSummary(_message.Message):
    __slots__ = ("index", "name", "type", "path", "output_shape", "num_params")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    NUM_PARAMS_FIELD_NUMBER: _ClassVar[int]
    index: int
    name: str
    type: str
    path: str
    output_shape: _containers.RepeatedScalarFieldContainer[int]
    num_params: int
    def __init__(self, index: _Optional[int] = ..., name: _Optional[str] = ..., type: _Optional[str] = ..., path: _Optional[str] = ..., output_shape: _Optional[_Iterable[int]] = ..., num_params: _Optional[int] = ...) -> None: ...

class CompileSpecResponse(_message.Message):
    __slots__ = ("spec_hash", "layers", "output_shape", "num_params", "code", "summary")
    SPEC_HASH_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    NUM_PARAMS_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    spec_hash: str
    layers: _containers.RepeatedCompositeFieldContainer[LayerSummary]
    output_shape: _containers.RepeatedScalarFieldContainer[int]
    num_params: int
    code: str
    summary: str
    def __init__(self, spec_hash: _Optional[str] = ..., layers: _Optional[_Iterable[_Union[LayerSummary, _Mapping]]] = ..., output_shape: _Optional[_Iterable[int]] = ..., num_params: _Optional[int] = ..., code: _Optional[str] = ..., summary: _Optional[str] = ...) -> None: ...

class EvaluateOptions(_message.Message):
    __slots__ = ("skip_output", "statistics", "layers", "all_layers", "bins", "amp")
    SKIP_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    STATISTICS_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    ALL_LAYERS_FIELD_NUMBER: _ClassVar[int]
    BINS_FIELD_NUMBER: _ClassVar[int]
    AMP_FIELD_NUMBER: _ClassVar[int]
    skip_output: bool
    statistics: bool
    layers: _containers.RepeatedScalarFieldContainer[str]
    all_layers: bool
    bins: int
    amp: str
    def __init__(self, skip_output: _Optional[bool] = ..., statistics: _Optional[bool] = ..., layers: _Optional[_Iterable[str]] = ..., all_layers: _Optional[bool] = ..., bins: _Optional[int] = ..., amp: _Optional[str] = ...) -> None: ...

class EvaluateRequest(_message.Message):
    __slots__ = ("spec", "model_id", "input", "options", "seed")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    spec: SpecSource
    model_id: str
    input: _tensor_pb2.Tensor
    options: EvaluateOptions
    seed: int
    def __init__(self, spec: _Optional[_Union[SpecSource, _Mapping]] = ..., model_id: _Optional[str] = ..., input: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., options: _Optional[_Union[EvaluateOptions, _Mapping]] = ..., seed: _Optional[int] = ...) -> None: ...

class Histogram(_message.Message):
    __slots__ = ("edges", "counts", "scale")
    EDGES_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    edges: _containers.RepeatedScalarFieldContainer[float]
    counts: _containers.RepeatedScalarFieldContainer[int]
    scale: str
    def __init__(self, edges: _Optional[_Iterable[float]] = ..., counts: _Optional[_Iterable[int]] = ..., scale: _Optional[str] = ...) -> None: ...

class LayerStats(_message.Message):
    __slots__ = ("index", "name", "kind", "count", "mean", "std", "min", "max", "nan_count", "inf_count", "zero_fraction", "saturated_fraction", "dead_fraction", "histogram", "grad_norm", "entropy", "max_probability", "units")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    STD_FIELD_NUMBER: _ClassVar[int]
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    NAN_COUNT_FIELD_NUMBER: _ClassVar[int]
    INF_COUNT_FIELD_NUMBER: _ClassVar[int]
    ZERO_FRACTION_FIELD_NUMBER: _ClassVar[int]
    SATURATED_FRACTION_FIELD_NUMBER: _ClassVar[int]
    DEAD_FRACTION_FIELD_NUMBER: _ClassVar[int]
    HISTOGRAM_FIELD_NUMBER: _ClassVar[int]
    GRAD_NORM_FIELD_NUMBER: _ClassVar[int]
    ENTROPY_FIELD_NUMBER: _ClassVar[int]
    MAX_PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    UNITS_FIELD_NUMBER: _ClassVar[int]
    index: int
    name: str
    kind: str
    count: int
    mean: float
    std: float
    min: float
    max: float
    nan_count: int
    inf_count: int
    zero_fraction: float
    saturated_fraction: float
    dead_fraction: float
    histogram: Histogram
    grad_norm: float
    entropy: float
    max_probability: float
    units: int
    def __init__(self, index: _Optional[int] = ..., name: _Optional[str] = ..., kind: _Optional[str] = ..., count: _Optional[int] = ..., mean: _Optional[float] = ..., std: _Optional[float] = ..., min: _Optional[float] = ..., max: _Optional[float] = ..., nan_count: _Optional[int] = ..., inf_count: _Optional[int] = ..., zero_fraction: _Optional[float] = ..., saturated_fraction: _Optional[float] = ..., dead_fraction: _Optional[float] = ..., histogram: _Optional[_Union[Histogram, _Mapping]] = ..., grad_norm: _Optional[float] = ..., entropy: _Optional[float] = ..., max_probability: _Optional[float] = ..., units: _Optional[int] = ...) -> None: ...

class EvaluateResponse(_message.Message):
    __slots__ = ("output", "stats", "compute_seconds")
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    output: _tensor_pb2.Tensor
    stats: _containers.RepeatedCompositeFieldContainer[LayerStats]
    compute_seconds: float
    def __init__(self, output: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., stats: _Optional[_Iterable[_Union[LayerStats, _Mapping]]] = ..., compute_seconds: _Optional[float] = ...) -> None: ...

class StreamEvaluateStart(_message.Message):
    __slots__ = ("spec", "model_id", "options", "seed")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    spec: SpecSource
    model_id: str
    options: EvaluateOptions
    seed: int
    def __init__(self, spec: _Optional[_Union[SpecSource, _Mapping]] = ..., model_id: _Optional[str] = ..., options: _Optional[_Union[EvaluateOptions, _Mapping]] = ..., seed: _Optional[int] = ...) -> None: ...

class StreamEvaluateRequest(_message.Message):
    __slots__ = ("start", "batch")
    START_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    start: StreamEvaluateStart
    batch: _tensor_pb2.Tensor
    def __init__(self, start: _Optional[_Union[StreamEvaluateStart, _Mapping]] = ..., batch: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ...) -> None: ...

class StreamOutput(_message.Message):
    __slots__ = ("batch_index", "output")
    BATCH_INDEX_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    batch_index: int
    output: _tensor_pb2.Tensor
    def __init__(self, batch_index: _Optional[int] = ..., output: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ...) -> None: ...

class StreamSummary(_message.Message):
    __slots__ = ("batches", "rows", "stats", "compute_seconds")
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    batches: int
    rows: int
    stats: _containers.RepeatedCompositeFieldContainer[LayerStats]
    compute_seconds: float
    def __init__(self, batches: _Optional[int] = ..., rows: _Optional[int] = ..., stats: _Optional[_Iterable[_Union[LayerStats, _Mapping]]] = ..., compute_seconds: _Optional[float] = ...) -> None: ...

class StreamEvaluateResponse(_message.Message):
    __slots__ = ("output", "summary")
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    output: StreamOutput
    summary: StreamSummary
    def __init__(self, output: _Optional[_Union[StreamOutput, _Mapping]] = ..., summary: _Optional[_Union[StreamSummary, _Mapping]] = ...) -> None: ...

class TrainArrays(_message.Message):
    __slots__ = ("x", "y")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    x: _tensor_pb2.Tensor
    y: _tensor_pb2.Tensor
    def __init__(self, x: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., y: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ...) -> None: ...

class TrainRequest(_message.Message):
    __slots__ = ("spec", "dataset", "arrays", "config", "name")
    class ConfigEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _spec_pb2.Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_spec_pb2.Value, _Mapping]] = ...) -> None: ...
    SPEC_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    ARRAYS_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    spec: SpecSource
    dataset: str
    arrays: TrainArrays
    config: _containers.MessageMap[str, _spec_pb2.Value]
    name: str
    def __init__(self, spec: _Optional[_Union[SpecSource, _Mapping]] = ..., dataset: _Optional[str] = ..., arrays: _Optional[_Union[TrainArrays, _Mapping]] = ..., config: _Optional[_Mapping[str, _spec_pb2.Value]] = ..., name: _Optional[str] = ...) -> None: ...

class EpochMetrics(_message.Message):
    __slots__ = ("epoch", "loss", "val_loss", "accuracy", "lr", "seconds", "step")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    VAL_LOSS_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    LR_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    loss: float
    val_loss: float
    accuracy: float
    lr: float
    seconds: float
    step: int
    def __init__(self, epoch: _Optional[int] = ..., loss: _Optional[float] = ..., val_loss: _Optional[float] = ..., accuracy: _Optional[float] = ..., lr: _Optional[float] = ..., seconds: _Optional[float] = ..., step: _Optional[int] = ...) -> None: ...

class TrainStarted(_message.Message):
    __slots__ = ("epochs", "steps_per_epoch", "train_samples", "val_samples")
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    STEPS_PER_EPOCH_FIELD_NUMBER: _ClassVar[int]
    TRAIN_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    VAL_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    epochs: int
    steps_per_epoch: int
    train_samples: int
    val_samples: int
    def __init__(self, epochs: _Optional[int] = ..., steps_per_epoch: _Optional[int] = ..., train_samples: _Optional[int] = ..., val_samples: _Optional[int] = ...) -> None: ...

class StatsWindow(_message.Message):
    __slots__ = ("step", "stats")
    STEP_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    step: int
    stats: _containers.RepeatedCompositeFieldContainer[LayerStats]
    def __init__(self, step: _Optional[int] = ..., stats: _Optional[_Iterable[_Union[LayerStats, _Mapping]]] = ...) -> None: ...

class TrainFinished(_message.Message):
    __slots__ = ("status", "reason", "steps", "stats")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    status: RunStatus
    reason: str
    steps: int
    stats: _containers.RepeatedCompositeFieldContainer[LayerStats]
    def __init__(self, status: _Optional[_Union[RunStatus, str]] = ..., reason: _Optional[str] = ..., steps: _Optional[int] = ..., stats: _Optional[_Iterable[_Union[LayerStats, _Mapping]]] = ...) -> None: ...

class ProgressItem(_message.Message):
    __slots__ = ("epoch", "stats")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    epoch: EpochMetrics
    stats: StatsWindow
    def __init__(self, epoch: _Optional[_Union[EpochMetrics, _Mapping]] = ..., stats: _Optional[_Union[StatsWindow, _Mapping]] = ...) -> None: ...

class TrainProgress(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ProgressItem]
    def __init__(self, items: _Optional[_Iterable[_Union[ProgressItem, _Mapping]]] = ...) -> None: ...

class TrainEvent(_message.Message):
    __slots__ = ("run_id", "started", "progress", "finished")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    started: TrainStarted
    progress: TrainProgress
    finished: TrainFinished
    def __init__(self, run_id: _Optional[str] = ..., started: _Optional[_Union[TrainStarted, _Mapping]] = ..., progress: _Optional[_Union[TrainProgress, _Mapping]] = ..., finished: _Optional[_Union[TrainFinished, _Mapping]] = ...) -> None: ...

class ModelRecord(_message.Message):
    __slots__ = ("id", "name", "status", "spec", "num_params", "spec_hash", "created", "updated", "config", "history", "stats", "dataset", "reason", "has_weights")
    class ConfigEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _spec_pb2.Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_spec_pb2.Value, _Mapping]] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    NUM_PARAMS_FIELD_NUMBER: _ClassVar[int]
    SPEC_HASH_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    UPDATED_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    HAS_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    status: RunStatus
    spec: _spec_pb2.ModelSpec
    num_params: int
    spec_hash: str
    created: _timestamp_pb2.Timestamp
    updated: _timestamp_pb2.Timestamp
    config: _containers.MessageMap[str, _spec_pb2.Value]
    history: _containers.RepeatedCompositeFieldContainer[EpochMetrics]
    stats: _containers.RepeatedCompositeFieldContainer[LayerStats]
    dataset: str
    reason: str
    has_weights: bool
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., status: _Optional[_Union[RunStatus, str]] = ..., spec: _Optional[_Union[_spec_pb2.ModelSpec, _Mapping]] = ..., num_params: _Optional[int] = ..., spec_hash: _Optional[str] = ..., created: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., config: _Optional[_Mapping[str, _spec_pb2.Value]] = ..., history: _Optional[_Iterable[_Union[EpochMetrics, _Mapping]]] = ..., stats: _Optional[_Iterable[_Union[LayerStats, _Mapping]]] = ..., dataset: _Optional[str] = ..., reason: _Optional[str] = ..., has_weights: _Optional[bool] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ("status", "page_size", "page_token")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    status: RunStatus
    page_size: int
    page_token: str
    def __init__(self, status: _Optional[_Union[RunStatus, str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models", "next_page_token")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelRecord]
    next_page_token: str
    def __init__(self, models: _Optional[_Iterable[_Union[ModelRecord, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("model_id",)
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    def __init__(self, model_id: _Optional[str] = ...) -> None: ...

class DeleteModelRequest(_message.Message):
    __slots__ = ("model_id",)
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    def __init__(self, model_id: _Optional[str] = ...) -> None: ...

class DeleteModelResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ExportModelRequest(_message.Message):
    __slots__ = ("model_id",)
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    def __init__(self, model_id: _Optional[str] = ...) -> None: ...

class ExportModelResponse(_message.Message):
    __slots__ = ("spec", "weights")
    class WeightsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _tensor_pb2.Tensor
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ...) -> None: ...
    SPEC_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    spec: _spec_pb2.ModelSpec
    weights: _containers.MessageMap[str, _tensor_pb2.Tensor]
    def __init__(self, spec: _Optional[_Union[_spec_pb2.ModelSpec, _Mapping]] = ..., weights: _Optional[_Mapping[str, _tensor_pb2.Tensor]] = ...) -> None: ...

class ListActivationsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ParameterInfo(_message.Message):
    __slots__ = ("name", "type", "default", "constraint", "minimum", "maximum", "exclusive_minimum", "exclusive_maximum", "choices", "required", "inferred", "items")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_FIELD_NUMBER: _ClassVar[int]
    CONSTRAINT_FIELD_NUMBER: _ClassVar[int]
    MINIMUM_FIELD_NUMBER: _ClassVar[int]
    MAXIMUM_FIELD_NUMBER: _ClassVar[int]
    EXCLUSIVE_MINIMUM_FIELD_NUMBER: _ClassVar[int]
    EXCLUSIVE_MAXIMUM_FIELD_NUMBER: _ClassVar[int]
    CHOICES_FIELD_NUMBER: _ClassVar[int]
    REQUIRED_FIELD_NUMBER: _ClassVar[int]
    INFERRED_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: str
    default: _spec_pb2.Value
    constraint: str
    minimum: float
    maximum: float
    exclusive_minimum: bool
    exclusive_maximum: bool
    choices: _containers.RepeatedScalarFieldContainer[str]
    required: bool
    inferred: bool
    items: str
    def __init__(self, name: _Optional[str] = ..., type: _Optional[str] = ..., default: _Optional[_Union[_spec_pb2.Value, _Mapping]] = ..., constraint: _Optional[str] = ..., minimum: _Optional[float] = ..., maximum: _Optional[float] = ..., exclusive_minimum: _Optional[bool] = ..., exclusive_maximum: _Optional[bool] = ..., choices: _Optional[_Iterable[str]] = ..., required: _Optional[bool] = ..., inferred: _Optional[bool] = ..., items: _Optional[str] = ...) -> None: ...

class ActivationInfo(_message.Message):
    __slots__ = ("name", "aliases", "summary", "formula", "parameters", "range_min", "range_max", "flat_region")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    FORMULA_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    RANGE_MIN_FIELD_NUMBER: _ClassVar[int]
    RANGE_MAX_FIELD_NUMBER: _ClassVar[int]
    FLAT_REGION_FIELD_NUMBER: _ClassVar[int]
    name: str
    aliases: _containers.RepeatedScalarFieldContainer[str]
    summary: str
    formula: str
    parameters: _containers.RepeatedCompositeFieldContainer[ParameterInfo]
    range_min: float
    range_max: float
    flat_region: str
    def __init__(self, name: _Optional[str] = ..., aliases: _Optional[_Iterable[str]] = ..., summary: _Optional[str] = ..., formula: _Optional[str] = ..., parameters: _Optional[_Iterable[_Union[ParameterInfo, _Mapping]]] = ..., range_min: _Optional[float] = ..., range_max: _Optional[float] = ..., flat_region: _Optional[str] = ...) -> None: ...

class ListActivationsResponse(_message.Message):
    __slots__ = ("activations",)
    ACTIVATIONS_FIELD_NUMBER: _ClassVar[int]
    activations: _containers.RepeatedCompositeFieldContainer[ActivationInfo]
    def __init__(self, activations: _Optional[_Iterable[_Union[ActivationInfo, _Mapping]]] = ...) -> None: ...

class ListLayersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LayerInfo(_message.Message):
    __slots__ = ("name", "aliases", "summary", "parameters", "module")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    MODULE_FIELD_NUMBER: _ClassVar[int]
    name: str
    aliases: _containers.RepeatedScalarFieldContainer[str]
    summary: str
    parameters: _containers.RepeatedCompositeFieldContainer[ParameterInfo]
    module: str
    def __init__(self, name: _Optional[str] = ..., aliases: _Optional[_Iterable[str]] = ..., summary: _Optional[str] = ..., parameters: _Optional[_Iterable[_Union[ParameterInfo, _Mapping]]] = ..., module: _Optional[str] = ...) -> None: ...

class ListLayersResponse(_message.Message):
    __slots__ = ("layers",)
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    layers: _containers.RepeatedCompositeFieldContainer[LayerInfo]
    def __init__(self, layers: _Optional[_Iterable[_Union[LayerInfo, _Mapping]]] = ...) -> None: ...

class ListDatasetsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DatasetInfo(_message.Message):
    __slots__ = ("name", "description", "input_shape", "target_kind", "classes", "rows")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    INPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    TARGET_KIND_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    input_shape: _containers.RepeatedScalarFieldContainer[int]
    target_kind: str
    classes: int
    rows: int
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., input_shape: _Optional[_Iterable[int]] = ..., target_kind: _Optional[str] = ..., classes: _Optional[int] = ..., rows: _Optional[int] = ...) -> None: ...

class ListDatasetsResponse(_message.Message):
    __slots__ = ("datasets",)
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    datasets: _containers.RepeatedCompositeFieldContainer[DatasetInfo]
    def __init__(self, datasets: _Optional[_Iterable[_Union[DatasetInfo, _Mapping]]] = ...) -> None: ...

class GetSchemaRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetSchemaResponse(_message.Message):
    __slots__ = ("spec_schema", "train_config_schema")
    SPEC_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    TRAIN_CONFIG_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    spec_schema: str
    train_config_schema: str
    def __init__(self, spec_schema: _Optional[str] = ..., train_config_schema: _Optional[str] = ...) -> None: ...
