"""GhostNetV2 (Tang et al., NeurIPS 2022) as its authors and timm build it (`ghostnetv2_100/130/160`):
GhostNet's PyTorch form with DFC attention on the up Ghost module of every bottleneck after the second."""
from networks.ghostnet_pytorch import TIMM_LAYERS, GhostNetPyTorch

# DFC attention's layers (myconv2d.dfc_attention) in timm's GhostModuleV2: `short_conv`, a Sequential
DFC_LAYERS = (
    ('Conv2d_{n}_up_pointwise/dfc/conv', '{block}.ghost1.short_conv.0', '{block}.ghost1.short_conv.1', 'conv'),
    ('Conv2d_{n}_up_pointwise/dfc/horizontal', '{block}.ghost1.short_conv.2', '{block}.ghost1.short_conv.3',
     'depthwise'),
    ('Conv2d_{n}_up_pointwise/dfc/vertical', '{block}.ghost1.short_conv.4', '{block}.ghost1.short_conv.5',
     'depthwise'),
)
ATTENTION_FROM = 3   # timm: `layer_idx > 1`, counted from 0 over the 16 bottlenecks
# DFC pools 2x2 on the stride-32 maps: ceil(S / 32) >= 2
MIN_IMAGE_SIZE = 33


class GhostNetV2(GhostNetPyTorch):
    """GhostNetV2: DFC attention (2x2 average pooling, 1x1 conv, depthwise (1, 5) and (5, 1), sigmoid, nearest
    upsampling) gating the up Ghost module of bottlenecks 3 .. 16."""

    scope = 'GhostNetV2'
    attention_from = ATTENTION_FROM
    min_image_size = MIN_IMAGE_SIZE
    timm_layers = TIMM_LAYERS + DFC_LAYERS
