"""cnntools: small Unix-style command-line tools for convolutional neural networks."""

__version__ = "0.1.0"
