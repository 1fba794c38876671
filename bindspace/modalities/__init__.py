"""The modality registry. Importing this package registers the six built-in modalities."""

from bindspace.modalities.base import (
    ConfigError,
    HeadConfig,
    LogitScaleConfig,
    ModalityConfig,
    ModalitySpec,
    ModelInput,
    TrunkConfig,
    collate_inputs,
    concat_inputs,
    get_modality,
    input_batch_size,
    list_modalities,
    register_modality,
)

# Registration order is the canonical modality order (tables, plots, defaults).
from bindspace.modalities import image, text, audio, depth, thermal, imu  # noqa: E402, F401, I001

__all__ = [
    "ConfigError",
    "HeadConfig",
    "LogitScaleConfig",
    "ModalityConfig",
    "ModalitySpec",
    "ModelInput",
    "TrunkConfig",
    "collate_inputs",
    "concat_inputs",
    "get_modality",
    "input_batch_size",
    "list_modalities",
    "register_modality",
]
