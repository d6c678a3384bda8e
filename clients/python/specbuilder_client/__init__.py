"""Python client for the specbuilder gRPC service: numpy in and out, pydantic results, no torch.

>>> from specbuilder_client import Client
>>> with Client("127.0.0.1:50051") as client:
...     result = client.evaluate(spec, x, seed=0, statistics=True)

A spec's weights are initialized from ``seed`` (default 0), so every server answers the same spec,
seed and input alike. The service describes itself: ``layers()`` and ``activations()`` give every
type with its parameters (kinds, defaults, bounds, choices, which are inferred), ``datasets()`` the
built-in datasets, ``schema()`` the JSON Schemas of a spec and of a training config.

A server with tokens wants one: ``token="..."``, or ``token_file=`` a file holding it on one
line (mode 600), which keeps it out of command lines and code. An inference token may read and
evaluate; calls it may not make (train, delete, export) raise ``PermissionDenied``. Over TLS,
``root_certificates=`` trusts the server's CA, and ``certificate_chain=`` with ``private_key=``
present this client's certificate to a server started with ``--tls-client-ca``.

Every failure raises a ``SpecbuilderError`` subclass carrying the status code, the server's
message and, for ``InvalidArgument``, each problem's path.
"""

from specbuilder_client.client import Client
from specbuilder_client.errors import (
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    SpecbuilderError,
    Unauthenticated,
    Unavailable,
    Violation,
)
from specbuilder_client.results import (
    ActivationInfo,
    Compiled,
    DatasetInfo,
    EvalResult,
    LayerInfo,
    LayerSummary,
    ModelRecord,
    ModelSummary,
    ParameterInfo,
    Schemas,
    StreamSummary,
    Validation,
)
from specbuilder_client.streaming import StreamResult
from specbuilder_client.training import EpochEvent, StatsEvent, TrainEvent, TrainFinished, TrainResult, TrainRun, TrainStarted
from specbuilder_wire.results import EpochMetrics, Histogram, LayerStats

__all__ = [
    "ActivationInfo", "Cancelled", "Client", "Compiled", "DatasetInfo", "DeadlineExceeded", "EpochEvent", "EpochMetrics",
    "EvalResult", "FailedPrecondition", "Histogram", "InvalidArgument", "LayerInfo", "LayerStats", "LayerSummary",
    "ModelRecord", "ModelSummary", "NotFound", "ParameterInfo", "ResourceExhausted", "Schemas", "SpecbuilderError", "StatsEvent",
    "StreamResult", "StreamSummary", "TrainEvent", "TrainFinished", "TrainResult", "TrainRun", "TrainStarted",
    "PermissionDenied", "Unauthenticated", "Unavailable", "Validation", "Violation",
]
