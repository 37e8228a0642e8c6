"""Detection parts shared by EfficientDet's model, post-processing and training: anchors, box
coding, target assignment, loss and NMS. Pure functions of static shapes, so they run under jit.
"""

from flax_effnet.detection.anchors import AnchorSpec

__all__ = ["AnchorSpec"]
