"""Quality of attention variants: MQAR recall accuracy (Zoology) and fidelity to exact softmax
attention. `run_quality` is what `lsbench quality` calls."""

from lsbench.quality.run import run_quality

__all__ = ["run_quality"]
