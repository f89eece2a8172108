"""ImageNet-1k's 1,000 classes, shipped: in caffe's order (its synsets.txt: the wnids sorted), each line a
wnid and its WordNet names as caffe's synset_words.txt writes them (`n01440764 tench, Tinca tinca`).
`imagenet_synset_words.txt` was written from the class lists timm ships (data, not code)."""
import os

SYNSET_WORDS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'imagenet_synset_words.txt')
NUM_CLASSES = 1000


def synset_words():
    """The 1,000 `wnid names` lines, class 0 first."""
    with open(SYNSET_WORDS) as f:
        return [line.strip() for line in f if line.strip()]
