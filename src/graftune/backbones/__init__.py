"""Pre-trained backbones: the contract (base.py), the sources behind one registry (sources.py), and the
surgery that removes an image model's old head (surgery.py)."""

from graftune.backbones.base import Backbone, LayerGroup
from graftune.backbones.sources import PRESETS, SOURCES, load_backbone, read_model_info, rebuild_backbone

__all__ = ["PRESETS", "SOURCES", "Backbone", "LayerGroup", "load_backbone", "read_model_info", "rebuild_backbone"]
