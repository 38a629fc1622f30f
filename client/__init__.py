"""Node side of fedlora: data loading, validation, redaction, model + LoRA, DP-SGD training."""
