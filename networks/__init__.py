"""Every network `--arch` names: how to build it from the flags, its dataset and its training recipe."""
import collections

from ghostnet import GhostNet
from networks.ghostnet_pytorch import GhostNetPyTorch
from networks.ghostnetv2 import GhostNetV2
from networks.ghostnetv3 import GhostNetV3
from networks.resnet import ResNet50
from networks.resnet_cifar import ResNet56
from networks.vgg import VGG16

IMAGENET, CIFAR10 = 'imagenet', 'cifar10'
DATASET_CLASSES = {IMAGENET: 1000, CIFAR10: 10}   # for --flops and --fake

# Flag defaults per recipe; `--lr` is per 256 images, scaled linearly to `--batch`.
GHOSTNET_RECIPE = dict(batch=1024, epochs=400, lr=0.1, optimizer='sgd', momentum=0.9, nesterov=1,
                       lr_schedule='cosine', warmup_epochs=5, weight_decay=4e-5, label_smoothing=0.1,
                       dropout_keep_prob=0.8, image_size=224)
# GhostNetV2: the authors' command (Efficient-AI-Backbones, ghostnetv2_pytorch/README.md): 8 GPUs x 128, timm's
# RMSpropTF (alpha 0.9, eps 1e-3, momentum 0.9), lr 0.064 at 1024 (0.016 per 256), x0.973 every 2.4 epochs,
# 3 warm-up epochs, 450 epochs, weight decay 1e-5, label smoothing 0.1 (train.py), dropout 0.2. Its RandAugment,
# random erasing and weight EMA are not encoded here (docs/family.md).
GHOSTNETV2_RECIPE = dict(batch=1024, epochs=450, lr=0.016, optimizer='rmsprop', momentum=0.9, nesterov=0,
                         lr_schedule='exponential', warmup_epochs=3, weight_decay=1e-5, label_smoothing=0.1,
                         dropout_keep_prob=0.8, image_size=224)
# GhostNetV3: the defaults of the authors' ghostnetv3_pytorch/train.py (the paper's numbers could not be checked):
# SGD with Nesterov momentum 0.9, lr 0.05 at 128 images per GPU on 8 GPUs (V2's count; V3 names none): 0.0125 per
# 256; cosine after 3 warm-up epochs, 300 epochs, weight decay 2e-5, label smoothing 0.1, no dropout. Its
# distillation from a large teacher is not encoded.
GHOSTNETV3_RECIPE = dict(batch=1024, epochs=300, lr=0.0125, optimizer='sgd', momentum=0.9, nesterov=1,
                         lr_schedule='cosine', warmup_epochs=3, weight_decay=2e-5, label_smoothing=0.1,
                         dropout_keep_prob=1., image_size=224)
# The authors: multi-step, no label smoothing. SGD 0.9, 0.1 per 256 images, /10 every 30 of 90 epochs.
RESNET50_RECIPE = dict(batch=256, epochs=90, lr=0.1, optimizer='sgd', momentum=0.9, nesterov=0, lr_schedule='step',
                       lr_decay_at='1/3,2/3', warmup_epochs=0, weight_decay=1e-4, label_smoothing=0.,
                       dropout_keep_prob=1., image_size=224, min_crop_area=0.08)
# The ResNet paper's CIFAR recipe: batch 128 at 0.1 (0.2 per 256), /10 at 32k and 48k of 64k iterations.
CIFAR_RECIPE = dict(batch=128, epochs=164, lr=0.2, optimizer='sgd', momentum=0.9, nesterov=0, lr_schedule='step',
                    lr_decay_at='1/2,3/4', warmup_epochs=0, weight_decay=1e-4, label_smoothing=0., dropout_keep_prob=1.,
                    image_size=32)

Architecture = collections.namedtuple('Architecture', 'model ghost dataset recipe help')

ARCHITECTURES = {
    'ghostnet': Architecture(GhostNet, None, IMAGENET, GHOSTNET_RECIPE,
                             'GhostNet on ImageNet, 224x224 (the default; --width_ratio, --se, --dw_code_str, '
                             '--ratio_code_str as released)'),
    'ghostnet-pytorch': Architecture(GhostNetPyTorch, None, IMAGENET, GHOSTNET_RECIPE,
                                     'GhostNet as PyTorch and timm build it (ghostnet_050/100/130: --width_ratio '
                                     '0.5/1.0/1.3); --load takes their .safetensors/.pth state dicts'),
    'ghostnetv2': Architecture(GhostNetV2, None, IMAGENET, GHOSTNETV2_RECIPE,
                               'GhostNetV2: DFC attention (timm ghostnetv2_100/130/160: --width_ratio 1.0/1.3/1.6); '
                               '--load takes their state dicts'),
    'ghostnetv3': Architecture(GhostNetV3, None, IMAGENET, GHOSTNETV3_RECIPE,
                               'GhostNetV3: GhostNetV2 trained with re-parameterizable branches, fused for '
                               'inference (timm ghostnetv3_050/100/130/160: --width_ratio 0.5/1.0/1.3/1.6)'),
    'resnet50': Architecture(ResNet50, False, IMAGENET, RESNET50_RECIPE, 'ResNet-50 on ImageNet, 224x224'),
    'ghost-resnet50': Architecture(ResNet50, True, IMAGENET, RESNET50_RECIPE,
                                   'Ghost-ResNet-50: every conv but the stem a Ghost module (--ratio, --dw)'),
    'vgg16': Architecture(VGG16, False, CIFAR10, dict(CIFAR_RECIPE, dropout_keep_prob=0.5),
                          'VGG-16 on CIFAR-10, 32x32 (13 convs, FC 512 + BN + ReLU, FC)'),
    'ghost-vgg16': Architecture(VGG16, True, CIFAR10, dict(CIFAR_RECIPE, dropout_keep_prob=0.5),
                                'Ghost-VGG-16: all 13 convs Ghost modules (--ratio, --dw)'),
    'resnet56': Architecture(ResNet56, False, CIFAR10, CIFAR_RECIPE, 'ResNet-56 on CIFAR-10, 32x32'),
    'ghost-resnet56': Architecture(ResNet56, True, CIFAR10, CIFAR_RECIPE,
                                   'Ghost-ResNet-56: every conv but the first a Ghost module (--ratio, --dw)'),
}


def build_model(args, num_classes):
    """The network `args.arch` names, as the flags describe it, with `num_classes` outputs."""
    arch = ARCHITECTURES[args.arch]
    common = dict(num_classes=num_classes, data_format=args.data_format, image_shape=args.image_size,
                  weight_decay=args.weight_decay, dropout_keep_prob=args.dropout_keep_prob,
                  label_smoothing=args.label_smoothing)
    if arch.ghost is None:
        model = arch.model(width=args.width_ratio, se=bool(args.se), dw_code=args.dw_code,
                           ratio_code=args.ratio_code, **common)
    else:
        model = arch.model(ghost=arch.ghost, ratio=args.ratio, dw=args.dw, **common)
    model.optimizer_name, model.momentum, model.nesterov = args.optimizer, args.momentum, bool(args.nesterov)
    return model
