"""The modality registry. Importing this package registers the six built-in modalities, then the
modalities other installed packages declare under the entry point group ``bindspace.modalities``."""

# Registration order is the canonical modality order (tables, plots, defaults): ImageBind's.
# isort: off
from bindspace.modalities import image  # noqa: F401
from bindspace.modalities import text  # noqa: F401
from bindspace.modalities import audio  # noqa: F401
from bindspace.modalities import depth  # noqa: F401
from bindspace.modalities import thermal  # noqa: F401
from bindspace.modalities import imu  # noqa: F401

# isort: on
from bindspace.errors import ConfigError
from bindspace.modalities.base import (
    ENCODER_PARTS,
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
    load_plugins,
    register_modality,
    unregister_modality,
)

load_plugins()

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
    "unregister_modality",
]
