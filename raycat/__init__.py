"""raycat: the fast.ai image-classifier recipe as a distributed batch system on Ray."""

__version__ = "0.1.0"
