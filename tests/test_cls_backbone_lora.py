"""projects/snnet_cls: ``model.backbone_lora_rank`` (backbone PET, SN-Netv2 Fig. 12a) and ``train.ls_init_images``
(SN-Netv1 supplementary F) reach a tiny training run of the synthetic config."""
import os

import pytest
import torch

import projects.snnet_cls.train as train_cli
import projects.snnet_cls.training as training
from datasets.make_synthetic_imagefolder import make_synthetic_imagefolder
from projects.snnet_cls.export import load_classifier, save_exported_classifier
from snnet_core import load_snnet
from tests.plain_train_checks import check_backbone_lora_log, check_ls_init, spy_on_ls_init

TINY = os.path.join(os.path.dirname(__file__), "..", "projects", "snnet_cls", "configs", "synthetic",
                    "snnetv2_tiny.py")
FACTORS = ("lora_down", "lora_up")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("imagefolder"))
    make_synthetic_imagefolder(root, num_train=8, num_val=2, size=32, classes=4, seed=0)
    return root


@pytest.mark.parametrize("rank, images", [(2, 0), (0, 4)])
def test_backbone_lora_rank_and_ls_init_images_reach_training(data_root, tmp_path, monkeypatch, rank, images):
    """``model.backbone_lora_rank=r`` trains only the anchors' LoRA factors and classifiers, and the checkpoint
    loads back with them; ``train.ls_init_images=0`` leaves the stitching layers at PyTorch's default init, N
    feeds LS init N images."""
    fed, start = spy_on_ls_init(monkeypatch, training)
    out = tmp_path / "run"
    train_cli.main(["--config-file", TINY, "--stitch", "none", f"dataloader.root={data_root}",
                    f"train.output_dir={out}", "train.epochs=1", f"model.backbone_lora_rank={rank}",
                    f"train.ls_init_images={images}"])
    with open(out / "log.txt") as f:
        log = f.read()
    net = load_snnet(str(out / "model_final.pth"))
    assert net.backbone_lora_rank == rank
    end = net.state_dict()
    factors = [k for k in end if k.startswith("anchors.") and k.endswith(FACTORS)]
    moved = {k for k in end if not torch.equal(end[k], start[k])}
    stitch_weights = [k for k in end if k.startswith("stitch_") and k.endswith(".weight")]
    check_backbone_lora_log(log, rank)
    if rank:
        anchors_moved = {k for k in moved if k.startswith("anchors.")}
        assert anchors_moved & set(factors)
        assert all(k.endswith(FACTORS) or ".head." in k for k in anchors_moved)  # the classifiers train too
        path = str(tmp_path / "stitch_5.pth")  # the export merges the factors: plain Linear layers, same logits
        save_exported_classifier(path, net, train_cli.read_checkpoint_header(str(out / "model_final.pth"))["spec"], 5)
        exported, frames = load_classifier(path).model, torch.rand(2, 3, 32, 32)
        assert not any(n.endswith(FACTORS) for n in exported.state_dict())
        with torch.no_grad():
            torch.testing.assert_close(exported(frames), net.classify(frames, stitch_id=5), rtol=1e-4, atol=1e-5)
    else:
        assert not factors and any(".blocks." in k for k in moved)
    check_ls_init(log, images, fed, moved, stitch_weights)
