"""The hyperparameters a training search may vary: the names a `SearchDimension` may take.

Part of the training contract that is not a protobuf enum: the training
service validates a search against it, and the CLI checks `--search` flags
against it before it calls the service.
"""

from __future__ import annotations

# Each searchable name and the training config field it sets: (section, field).
SEARCHABLE: dict[str, tuple[str, str]] = {
    "learning_rate": ("hyperparameters", "learning_rate"),
    "batch_size": ("hyperparameters", "batch_size"),
    "epochs": ("hyperparameters", "epochs"),
    "weight_decay": ("hyperparameters", "weight_decay"),
    "warmup_ratio": ("hyperparameters", "warmup_ratio"),
    "lora_rank": ("lora", "rank"),
    "lora_alpha": ("lora", "alpha"),
    "lora_dropout": ("lora", "dropout"),
    "distill_temperature": ("distill", "temperature"),
    "distill_alpha": ("distill", "alpha"),
}
