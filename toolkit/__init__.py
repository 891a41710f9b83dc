"""rtool: train ResNet classifiers and carry them to every runtime, with proof of parity."""

__version__ = "0.1.0"
