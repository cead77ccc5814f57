"""dlnlab: a lab for the training dynamics and loss landscape of deep linear networks."""
from dlnlab.model import DeepLinearNet

__all__ = ["DeepLinearNet"]
__version__ = "0.1.0"
