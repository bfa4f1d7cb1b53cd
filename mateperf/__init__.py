"""mateperf: the performance lab of Desktop-Mate."""

__version__ = "0.1.0"
