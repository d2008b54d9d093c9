"""The detectron2 application skeleton (``snnet_core.d2.app``): what a project must give it."""
import pytest

from projects.snnet_setr.train_net import SegmentationApp
from projects.snnet_vitdet.train_net import DetectionApp
from snnet_core.d2.app import D2App


def test_an_app_missing_a_task_method_is_refused_when_built():
    class Partial(D2App):
        def check_config(self, cfg, training, source):
            pass

    with pytest.raises(TypeError, match="abstract methods .*do_test"):
        Partial()
    assert DetectionApp().kind == "detection" and SegmentationApp().kind == "segmentation"
