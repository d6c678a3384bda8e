"""The model store: trained models and training runs, with their safetensors weights.

Two backends behind one contract: a directory (SQLite index + weights files; the embedded
default) and PostgreSQL + a bucket or shared directory of weights, for replicas on many hosts
(``specbuilder.store.postgres``). ``ModelStore.open(url, weights=...)`` opens either;
``ModelStore`` is the API; ``ModelRecord`` what it returns about an entry, ``Page`` of
``ModelSummary`` what a listing returns. See ``specbuilder.store.model_store`` for the layout,
the crash-safety argument, the limits and the permissions.
"""

from specbuilder.store.model_store import ModelStore
from specbuilder.store.records import (
    FINAL_STATUSES,
    STATUSES,
    BadCursor,
    ModelNotFound,
    ModelRecord,
    ModelSummary,
    NoWeights,
    Page,
    QuotaExceeded,
    Status,
    StoreError,
    StoreUnavailable,
)

__all__ = [
    "FINAL_STATUSES", "STATUSES", "BadCursor", "ModelNotFound", "ModelRecord", "ModelStore", "ModelSummary", "NoWeights", "Page",
    "QuotaExceeded", "Status", "StoreError", "StoreUnavailable",
]
