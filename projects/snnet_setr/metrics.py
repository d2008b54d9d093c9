"""mIoU, mAcc and aAcc of a semantic segmentation, through detectron2's ``SemSegEvaluator``.

The evaluator accumulates a confusion matrix over the test set (prediction = argmax of the model's ``sem_seg``
scores at the label map's size; pixels labelled 255 are left out) and reports, in percent:

- ``mIoU``: the mean over classes of ``TP / (TP + FP + FN)``, ``mAcc``: the mean over classes of ``TP / (TP + FN)``,
- ``aAcc``: ``sum(TP) / labelled pixels`` (detectron2's ``pACC``; its ``mACC`` is ``mAcc``),
- ``IoU-<class>`` per class.

Both means run over the classes present in the ground truth. mmsegmentation's ``IoUMetric`` averages IoU over the
classes present in the ground truth *or* the predictions: a class predicted somewhere but absent from every label
map counts there with IoU 0 and here not at all (its accuracy is left out by both). On ADE20K's and COCO-Stuff-10K's
test sets, where every class occurs, the two agree.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
from detectron2.evaluation import SemSegEvaluator

REPORT_METRICS = ("mIoU", "mAcc", "aAcc")


def report_metrics(results: Mapping[str, float], class_names: Sequence[str]) -> Dict[str, float]:
    """``SemSegEvaluator``'s ``results["sem_seg"]`` as ``{"mIoU", "mAcc", "aAcc", "IoU-<class>", ...}`` (percent;
    NaN for a class absent from the ground truth)."""
    metrics = {"mIoU": results["mIoU"], "mAcc": results["mACC"], "aAcc": results["pACC"]}
    metrics.update({f"IoU-{name}": results[f"IoU-{name}"] for name in class_names})
    return metrics


class SemSegMetrics(SemSegEvaluator):
    """``SemSegEvaluator`` whose ``evaluate()`` returns ``{"sem_seg": report_metrics(...)}`` (``None`` on the other
    ranks of a distributed evaluation). It skips what is not reported: the boundary IoU, and the RLE-encoded
    predictions unless ``output_dir`` is given (where ``sem_seg_predictions.json`` is written)."""

    def __init__(self, dataset_name: str, distributed: bool = True, output_dir: Optional[str] = None):
        super().__init__(dataset_name, distributed=distributed, output_dir=output_dir)
        self._compute_boundary_iou = False

    def encode_json_sem_seg(self, sem_seg: np.ndarray, input_file_name: str) -> List[dict]:
        return super().encode_json_sem_seg(sem_seg, input_file_name) if self._output_dir else []

    def evaluate(self) -> Optional[Dict[str, Dict[str, float]]]:
        results = super().evaluate()
        if results is None:  # not the main process
            return None
        return OrderedDict(sem_seg=report_metrics(results["sem_seg"], self._class_names))
