"""Datasets other than ImageNet (CIFAR-10) and the small learnable samples the demo and tests write."""
