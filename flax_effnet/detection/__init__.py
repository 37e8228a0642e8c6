"""Detection parts shared by EfficientDet's model, post-processing and training: anchors, box
coding, target assignment, loss and NMS. Pure functions of static shapes, so they run under jit.
"""

from flax_effnet.detection.anchors import AnchorSpec, flatten_levels
from flax_effnet.detection.boxes import box_iou, decode_boxes, encode_boxes
from flax_effnet.detection.loss import detection_loss, focal_loss, huber_loss
from flax_effnet.detection.postprocess import Detections, detect, nms
from flax_effnet.detection.targets import label_anchors

__all__ = [
    "AnchorSpec",
    "Detections",
    "box_iou",
    "decode_boxes",
    "detect",
    "detection_loss",
    "encode_boxes",
    "flatten_levels",
    "focal_loss",
    "huber_loss",
    "label_anchors",
    "nms",
]
