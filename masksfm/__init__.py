"""masksfm: self-supervised monocular depth and ego-motion with geometric multi-masks."""

__version__ = "0.1.0"
