"""Serving-side collectors: summarise attention in the serving process, write sketches.

    from collectors import AttentionCollector
"""

from collectors.collector import AttentionCollector, CollectorStats
from collectors.process import ProcessCollector
from monitor.errors import InvalidAttention

__all__ = ["AttentionCollector", "CollectorStats", "InvalidAttention", "ProcessCollector"]
