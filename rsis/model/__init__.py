"""RRIS network: ResNet encoder, text projection, recurrent ConvLSTM decoder, soft IoU loss."""

from rsis.model.backbone import BACKBONES, build_backbone
from rsis.model.loss import soft_iou, soft_iou_loss
from rsis.model.rris import RRIS, ModelConfig, input_spec
from rsis.model.text import TEXT_TRANSFORMS, TextProjection

__all__ = [
    "BACKBONES",
    "RRIS",
    "TEXT_TRANSFORMS",
    "ModelConfig",
    "TextProjection",
    "build_backbone",
    "input_spec",
    "soft_iou",
    "soft_iou_loss",
]
