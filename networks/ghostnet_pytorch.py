"""GhostNet as its authors' PyTorch release and timm build it (`ghostnet_050/100/130`): the TF release's 16
bottlenecks (ghostnet.BOTTLENECKS) with PyTorch's padding, SE and head, fed RGB; and where timm keeps each
of its weights (`torch_layers`), for loading timm's files (weights/state_dict.py)."""
from ghostnet import GhostNet

# timm's `blocks`: how many of the 16 bottlenecks each stage holds; Conv2d_17 is the next stage's only block
TIMM_STAGES = (1, 1, 1, 1, 1, 1, 5, 1, 4)
# (this repo's layer, timm's conv or Linear, timm's batch norm or None, the kernel's kind), per layer;
# `{n}` numbers a bottleneck (1 .. 16), `{block}` is its module in timm (blocks.<stage>.<index>)
TIMM_LAYERS = (
    ('Conv2d_0', 'conv_stem', 'bn1', 'conv'),
    ('Conv2d_{n}_up_pointwise/conv1', '{block}.ghost1.primary_conv.0', '{block}.ghost1.primary_conv.1', 'conv'),
    ('Conv2d_{n}_up_pointwise/dw1', '{block}.ghost1.cheap_operation.0', '{block}.ghost1.cheap_operation.1',
     'depthwise'),
    ('Conv2d_{n}_depthwise', '{block}.conv_dw', '{block}.bn_dw', 'depthwise'),
    ('Conv2d_{n}_se/fc1', '{block}.se.conv_reduce', None, 'conv'),
    ('Conv2d_{n}_se/fc2', '{block}.se.conv_expand', None, 'conv'),
    ('Conv2d_{n}_down_pointwise/conv1', '{block}.ghost2.primary_conv.0', '{block}.ghost2.primary_conv.1', 'conv'),
    ('Conv2d_{n}_down_pointwise/dw1', '{block}.ghost2.cheap_operation.0', '{block}.ghost2.cheap_operation.1',
     'depthwise'),
    ('Conv2d_{n}_shortcut_dw', '{block}.shortcut.0', '{block}.shortcut.1', 'depthwise'),
    ('Conv2d_{n}_shortcut_1x1', '{block}.shortcut.2', '{block}.shortcut.3', 'conv'),
    ('Conv2d_17', 'blocks.{}.0.conv'.format(len(TIMM_STAGES)), 'blocks.{}.0.bn1'.format(len(TIMM_STAGES)), 'conv'),
    ('Conv2d_18', 'conv_head', None, 'conv'),
    ('Logits/Conv2d_1c_1x1', 'classifier', None, 'linear'),
)
SE_REDUCTION = 0.25
CHANNEL_DIVISOR = 4


def make_divisible(value, divisor=CHANNEL_DIVISOR):
    """PyTorch's (timm's) channel rounding: to the nearest multiple of `divisor` (halves up), at least
    `divisor`, and never below 90% of `value`."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def timm_blocks():
    """timm's module of each bottleneck, in order: blocks.<stage>.<index in the stage>."""
    return ['blocks.{}.{}'.format(stage, index) for stage, size in enumerate(TIMM_STAGES) for index in range(size)]


class GhostNetPyTorch(GhostNet):
    """GhostNet's PyTorch form: k // 2 padding on every side, SE to make_divisible(C / 4) channels with the gate
    relu6(x + 3) / 6, Conv2d_18 with a bias and no BN, widths make_divisible(c * width), RGB input."""

    scope = 'GhostNetPyTorch'
    padding = 'symmetric'
    head_bn = False
    channel_order = 'RGB'

    def channels(self, nominal):
        # the table's products (2.3 x 80) are whole numbers up to float error
        return make_divisible(round(nominal) * self.width)

    def se_options(self, channels):
        return dict(reduced_channels=make_divisible(channels * SE_REDUCTION), gate='hard_sigmoid')

    timm_layers = TIMM_LAYERS

    @classmethod
    def torch_layers(cls):
        """{this repo's layer (under `scope`): (timm's conv or Linear, its batch norm or None, kind)}, from
        `timm_layers`: `{n}` for each bottleneck, `{i}` for each of the `branches`."""
        layers = {}
        for layer, conv, bn, kind in cls.timm_layers:
            for n, block in enumerate(timm_blocks() if '{n}' in layer else [None], start=1):
                for i in range(cls.branches) if '{i}' in layer else [None]:
                    places = tuple(name and name.format(block=block, i=i) for name in (conv, bn))
                    layers[layer.format(n=n, i=i)] = places + (kind,)
        return layers
