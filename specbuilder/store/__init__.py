"""The model store: trained models and training runs in a directory (SQLite index + safetensors).

``ModelStore`` is the API; ``ModelRecord`` what it returns about an entry. See
``specbuilder.store.model_store`` for the layout and the crash-safety argument.
"""

from specbuilder.store.model_store import ModelStore
from specbuilder.store.records import (
    FINAL_STATUSES,
    STATUSES,
    ModelNotFound,
    ModelRecord,
    NoWeights,
    QuotaExceeded,
    Status,
    StoreError,
)

__all__ = [
    "FINAL_STATUSES", "STATUSES", "ModelNotFound", "ModelRecord", "ModelStore", "NoWeights", "QuotaExceeded", "Status", "StoreError",
]
