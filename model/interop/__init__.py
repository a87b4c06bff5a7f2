"""Checkpoint interop with reference implementations (torchscale / unilm BEiT-3)."""

from .beit3 import beit3_config, beit3_to_omniway, load_beit3, omniway_to_beit3

__all__ = ["beit3_config", "beit3_to_omniway", "load_beit3", "omniway_to_beit3"]
