"""The detectron2 application skeleton (``snnet_core.d2.app``): what a project must give it; its hooks
(``snnet_core.d2.hooks``)."""
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


def test_ls_init_on_main_broadcasts_every_layer_it_fits_feature_projections_too(monkeypatch):
    """In SN-Netv1's sliding-window space LS init also fits ``feature_proj``: rank 0's solution of every layer
    reaches the other ranks (``dist.broadcast`` recorded, two ranks simulated)."""
    import torch

    from snnet_core import StitchedViT
    from snnet_core.d2 import hooks
    from tests.conftest import tiny_anchor

    torch.manual_seed(0)
    net = StitchedViT(*(tiny_anchor(embed_dim=w, depth=4, num_heads=w // 16) for w in (32, 48, 64)),
                      window=(2, 1), out_indices=(1, 3))
    sent = []
    monkeypatch.setattr(hooks.comm, "get_world_size", lambda: 2)
    monkeypatch.setattr(hooks.dist, "broadcast", lambda tensor, src: sent.append((tensor.data_ptr(), src)))
    hooks.ls_init_on_main(net, [torch.randn(4, 3, 32, 32)], 4)
    fitted = [*net.stitch_s2l.parameters(), *net.stitch_l2s.parameters(), *net.feature_proj.parameters()]
    assert len(net.feature_proj) == 4 and sorted(sent) == sorted((p.data_ptr(), 0) for p in fitted)
