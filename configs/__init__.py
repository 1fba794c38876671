"""bindspace's Hydra configs (``pkg://bindspace.configs``).

Modality configs are not YAML files: importing this package generates them from the modality
registry (:func:`bindspace.config.register_hydra_configs`), so every composition sees the modalities
that are registered, built-in or from a plugin package.
"""

from bindspace.config import register_hydra_configs

register_hydra_configs()
