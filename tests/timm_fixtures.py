"""timm's GhostNet family as the reference for --arch ghostnet-pytorch, ghostnetv2 and ghostnetv3: seeded
weights and images, and the script that records timm's key names, shapes, parameters and logits for them in
tests/data/timm_ghostnet.json.

The tests rebuild the same weights and images from the seeds with NumPy alone (no torch). Regenerate the
fixture by hand, in a venv with timm (see docs/family.md):

    /work/timm-venv/bin/python tests/timm_fixtures.py

This module imports neither TensorFlow nor torch at the top: both sides import it.
"""
import json
import os
import sys

import numpy as np

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'timm_ghostnet.json')
# (--arch, --width_ratio): timm's model
TIMM_MODELS = {('ghostnet-pytorch', 0.5): 'ghostnet_050', ('ghostnet-pytorch', 1.0): 'ghostnet_100',
               ('ghostnet-pytorch', 1.3): 'ghostnet_130',
               ('ghostnetv2', 1.0): 'ghostnetv2_100', ('ghostnetv2', 1.3): 'ghostnetv2_130',
               ('ghostnetv2', 1.6): 'ghostnetv2_160',
               ('ghostnetv3', 0.5): 'ghostnetv3_050', ('ghostnetv3', 1.0): 'ghostnetv3_100',
               ('ghostnetv3', 1.3): 'ghostnetv3_130', ('ghostnetv3', 1.6): 'ghostnetv3_160'}
IMAGE_SIZE = 224
NUM_IMAGES = 2
WEIGHT_SEED, IMAGE_SEED = 0, 1
MEAN_RGB, STD_RGB = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)   # timm's IMAGENET_DEFAULT_*


def seeded_value(rng, key, shape):
    """A random value for one state-dict entry that keeps the activations' size through the network:
    He-scaled kernels, BN scales near 1 with random statistics, small biases."""
    if key.endswith('num_batches_tracked'):
        return np.array(0, np.int64)
    if key.endswith('running_var'):
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    if key.endswith('running_mean') or key.endswith('bias'):
        return rng.normal(0, 0.1, shape).astype(np.float32)
    if len(shape) == 1:     # a batch norm's weight (scale); GhostNetV3's branches add up, a third each
        return rng.uniform(0.5, 1.0, shape).astype(np.float32) / (3 if '_rpr_' in key else 1)
    fan_in = int(np.prod(shape[1:]))
    return rng.normal(0, np.sqrt((2 if len(shape) == 4 else 1) / fan_in), shape).astype(np.float32)


def seeded_state_dict(keys_and_shapes, seed=WEIGHT_SEED):
    """{key: float32 (int64 for the BN counters) array} for [(key, shape)] in state-dict order."""
    rng = np.random.RandomState(seed)
    return {key: seeded_value(rng, key, tuple(shape)) for key, shape in keys_and_shapes}


def seeded_images(count=NUM_IMAGES, seed=IMAGE_SEED, size=IMAGE_SIZE):
    """uint8 RGB images [count, size, size, 3]: smooth colour ramps with noise, not flat noise alone."""
    rng = np.random.RandomState(seed)
    ramp = np.linspace(0, 1, size, dtype=np.float32)
    images = []
    for _ in range(count):
        colours = rng.uniform(0, 255, (2, 3))
        blend = (ramp[:, None, None] + ramp[None, :, None]) / 2
        image = colours[0] * (1 - blend) + colours[1] * blend + rng.normal(0, 40, (size, size, 3))
        images.append(np.clip(image, 0, 255).astype(np.uint8))
    return np.stack(images)


def timm_input(images):
    """timm's input for uint8 RGB images: /255, ImageNet mean and std, NCHW float32."""
    normalized = (images.astype(np.float32) / 255 - np.float32(MEAN_RGB)) / np.float32(STD_RGB)
    return np.ascontiguousarray(normalized.transpose(0, 3, 1, 2)).astype(np.float32)


def load_fixture(path=FIXTURE):
    """{(arch, width): {'model', 'keys': [(key, shape)], 'params', 'logits': [NUM_IMAGES, 1000] array}}."""
    with open(path) as f:
        stored = json.load(f)
    names = {name: arch_width for arch_width, name in TIMM_MODELS.items()}
    return {names[name]: dict(entry, keys=[(key, tuple(shape)) for key, shape in entry['keys']],
                              logits=np.array(entry['logits'], np.float32))
            for name, entry in stored.items()}


def timm_entry(timm, torch, name):
    """timm's model `name` with the seeded weights: its keys and shapes, its parameters once re-parameterized
    (GhostNetV3's branches fused, as they run) and its eval-mode logits."""
    from timm.utils.model import reparameterize_model
    model = timm.create_model(name).eval()
    keys = [(key, list(value.shape)) for key, value in model.state_dict().items()]
    weights = seeded_state_dict(keys)
    model.load_state_dict({key: torch.from_numpy(value) for key, value in weights.items()})
    with torch.no_grad():
        logits = model(torch.from_numpy(timm_input(seeded_images()))).numpy()
    top2 = np.sort(logits, 1)[:, -2:]
    print('{}: logits up to {:.3f}, top-1 margins {}'.format(
        name, np.abs(logits).max(), np.round(top2[:, 1] - top2[:, 0], 4)), file=sys.stderr)
    fused = reparameterize_model(model, inplace=False)
    return {'timm': timm.__version__, 'keys': keys, 'params': sum(p.numel() for p in fused.parameters()),
            'logits': [[float('{:.7g}'.format(v)) for v in row] for row in logits]}


def write_fixture(path=FIXTURE):
    """Run timm on the seeded weights and images for every model and write the fixture."""
    import timm
    import torch
    torch.manual_seed(0)
    fixture = {name: timm_entry(timm, torch, name) for name in TIMM_MODELS.values()}
    with open(path, 'w') as f:
        json.dump(fixture, f, separators=(',', ':'))
    print('Wrote {} ({:.0f} kB)'.format(path, os.path.getsize(path) / 1024), file=sys.stderr)


if __name__ == '__main__':
    write_fixture()
