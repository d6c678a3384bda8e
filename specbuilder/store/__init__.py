"""The model store: trained models and training runs in a directory (SQLite index + safetensors).

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
)

__all__ = [
    "FINAL_STATUSES", "STATUSES", "BadCursor", "ModelNotFound", "ModelRecord", "ModelStore", "ModelSummary", "NoWeights", "Page",
    "QuotaExceeded", "Status", "StoreError",
]
