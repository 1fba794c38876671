"""The modality registry. Importing this package registers the six built-in modalities."""

# Registration order is the canonical modality order (tables, plots, defaults): ImageBind's.
# isort: off
from bindspace.modalities import image  # noqa: F401
from bindspace.modalities import text  # noqa: F401
from bindspace.modalities import audio  # noqa: F401
from bindspace.modalities import depth  # noqa: F401
from bindspace.modalities import thermal  # noqa: F401
from bindspace.modalities import imu  # noqa: F401

# isort: on
from bindspace.modalities.base import (
    ENCODER_PARTS,
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

__all__ = [
    "ENCODER_PARTS",
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
