"""Classification metric for mmengine's evaluator (root registry)."""
from __future__ import annotations

from typing import Any, Dict, List, Sequence

from mmengine.evaluator import BaseMetric
from mmengine.registry import METRICS


@METRICS.register_module()
class ClsAccuracy(BaseMetric):
    """Top-1 accuracy in percent, the number VTAB-1k results report."""

    default_prefix = "cls"

    def process(self, data_batch: Any, data_samples: Sequence[Dict[str, int]]) -> None:
        self.results.extend((sample["pred"], sample["label"]) for sample in data_samples)

    def compute_metrics(self, results: List) -> Dict[str, float]:
        correct = sum(pred == label for pred, label in results)
        return dict(top1=100.0 * correct / max(len(results), 1))
