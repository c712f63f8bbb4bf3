"""SOLOModel: backbone -> FPN -> SOLO head, composed from objects passed in.

Shape letters: B batch, H W padded input size (multiples of 32).
"""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="solo_tf")
class SOLOModel(keras.Model):
    """float32 RGB images in [0, 255] [B, H, W, 3] -> dict of raw per-level logits.

    The output dict is section 4 of docs/architecture.md. Nothing depends on ``training``
    except BatchNorm layers that were left trainable (``freeze_batchnorm=False``).

    Args:
      backbone: images -> {"P2".."P5"} (``ResNetPyramidBackbone``).
      fpn: {"P2".."P5"} -> {"P2".."P6"} (``FPN``).
      head: {"P2".."P6"} -> logits dict (``SOLOHead`` or ``DecoupledSOLOHead``).
    """

    def __init__(self, backbone, fpn, head, **kwargs):
        super().__init__(**kwargs)
        self.backbone = backbone
        self.fpn = fpn
        self.head = head

    def call(self, images, training=None, lazy_masks=False):
        """``lazy_masks=True`` (inference only): the vanilla head returns its mask features
        and last-conv weights instead of all S^2 mask logits (``SOLOHead.lazy_mask_outputs``);
        ``solo_tf.postprocess`` accepts either form."""
        if isinstance(images, dict):  # the pipeline's model-input dict
            images = images["image"]
        features = self.backbone(images, training=training)
        features = self.fpn(features, training=training)
        return self.head(features, training=training, lazy_masks=lazy_masks)

    def get_config(self):
        return {
            **super().get_config(),
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "fpn": keras.saving.serialize_keras_object(self.fpn),
            "head": keras.saving.serialize_keras_object(self.head),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("backbone", "fpn", "head"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)
