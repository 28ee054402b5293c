"""advsoup: adversarial co-training with adapters and adversarial model soups."""
__version__ = "0.1.0"
