"""GhostNetV3 (Liu et al., 2024) as its authors and timm build it (`ghostnetv3_050/100/130/160`): GhostNetV2 whose
Ghost modules and stride-2 depthwise convs train as parallel re-parameterizable branches, fused into one conv
each for evaluation, prediction and export (myconv2d.branched_conv)."""
from networks.ghostnet_pytorch import TIMM_LAYERS
from networks.ghostnetv2 import DFC_LAYERS, GhostNetV2

BRANCHES = 3   # timm's num_conv_branches
# the branches in timm's GhostModuleV3 (`ghost1`, `ghost2`) and GhostBottleneckV3; `bn1` is ConvBnAct's batch norm
MODULE_BRANCHES = (
    ('conv1/branch{i}', 'primary_rpr_conv.{i}.conv', 'primary_rpr_conv.{i}.bn1', 'conv'),
    ('dw1/branch{i}', 'cheap_rpr_conv.{i}.conv', 'cheap_rpr_conv.{i}.bn1', 'depthwise'),
    ('dw1/scale', 'cheap_rpr_scale.conv', 'cheap_rpr_scale.bn1', 'depthwise'),
    ('dw1/skip', None, 'cheap_rpr_skip', 'depthwise'),
)
DEPTHWISE_BRANCHES = (
    ('Conv2d_{n}_depthwise/branch{i}', '{block}.dw_rpr_conv.{i}.conv', '{block}.dw_rpr_conv.{i}.bn1', 'depthwise'),
    ('Conv2d_{n}_depthwise/scale', '{block}.dw_rpr_scale.conv', '{block}.dw_rpr_scale.bn1', 'depthwise'),
)
BRANCHED_LAYERS = tuple(
    ('Conv2d_{{n}}_{}/{}'.format(module, layer), '{{block}}.{}.{}'.format(ghost, conv),
     '{{block}}.{}.{}'.format(ghost, bn), kind)
    for module, ghost in (('up_pointwise', 'ghost1'), ('down_pointwise', 'ghost2'))
    for layer, conv, bn, kind in MODULE_BRANCHES) + DEPTHWISE_BRANCHES
# the layers of the other forms that GhostNetV3 trains as branches
UNBRANCHED = ('Conv2d_{n}_up_pointwise/conv1', 'Conv2d_{n}_up_pointwise/dw1', 'Conv2d_{n}_depthwise',
              'Conv2d_{n}_down_pointwise/conv1', 'Conv2d_{n}_down_pointwise/dw1')


class GhostNetV3(GhostNetV2):
    """GhostNetV3: GhostNetV2's network; in training, each Ghost module's primary conv is 3 conv + BN branches
    and its cheap op 3 depthwise conv + BN, a 1x1 scale branch and a BN skip branch; each stride-2
    depthwise conv 3 conv + BN and a 1x1 scale branch."""

    scope = 'GhostNetV3'
    branches = BRANCHES
    timm_layers = tuple(row for row in TIMM_LAYERS if row[0] not in UNBRANCHED) + BRANCHED_LAYERS + DFC_LAYERS
