"""How close a quantized TFLite file is to the float one: top-1 agreement and both errors on held-back images."""
import collections
import os

import numpy as np

MIN_AGREEMENT = 0.97     # of the quantized file's top-1 with the float file's
MAX_ERROR_RISE = 0.02    # quantized top-1 error at most this above float's
BATCH = 64

Agreement = collections.namedtuple('Agreement', 'images agreement float_error quantized_error')


class QuantizationLoss(Exception):
    """The quantized file strays from the float file beyond the bounds."""


def tflite_logits(path, images):
    """The `logits` of a TFLite file's serving signature in LiteRT, in batches of BATCH."""
    from ai_edge_litert.interpreter import Interpreter  # here: the training-only Horovod stack has no LiteRT
    runner = Interpreter(path, num_threads=os.cpu_count()).get_signature_runner()
    return np.concatenate([runner(images=images[start:start + BATCH])['logits']
                           for start in range(0, len(images), BATCH)])


def measure(float_path, quantized_path, images, labels=None):
    """Agreement of the two files' top-1 on uint8 RGB `images`; their top-1 errors when `labels` are known."""
    float_top1, quantized_top1 = (tflite_logits(path, images).argmax(1) for path in (float_path, quantized_path))
    errors = (None, None) if labels is None else (np.mean(float_top1 != labels), np.mean(quantized_top1 != labels))
    return Agreement(len(images), float(np.mean(float_top1 == quantized_top1)), *errors)


def describe(agreement):
    """One line: agreement, and the errors when known."""
    text = 'top-1 agreement {:.4f} on {} held-back images'.format(agreement.agreement, agreement.images)
    if agreement.float_error is None:
        return text + ' (no class folders: errors unknown)'
    return text + ', top-1 error {:.4f} (float {:.4f})'.format(agreement.quantized_error, agreement.float_error)


def check(agreement, min_agreement=MIN_AGREEMENT, max_error_rise=MAX_ERROR_RISE):
    """QuantizationLoss saying which bound `agreement` misses."""
    missed = []
    if agreement.agreement < min_agreement:
        missed.append('agreement below {}'.format(min_agreement))
    if agreement.float_error is not None and agreement.quantized_error > agreement.float_error + max_error_rise:
        missed.append('error more than {} above float'.format(max_error_rise))
    if missed:
        raise QuantizationLoss('{}: {}'.format(describe(agreement), ', '.join(missed)))
