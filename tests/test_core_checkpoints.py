"""Anchor weights from local files (timm / official DeiT3 formats) and whole-SN-Net checkpoints; files claiming far
more data than their model holds (compressed zips, directories given as files) are refused before they are read."""
import os
import re
import struct
import zipfile

import pytest
import torch
from safetensors.torch import save_file

from snnet_core import build_anchor, load_snnet, read_state_dict, save_snnet
from snnet_core.model.checkpoint import describe_load_error
from snnet_core.io.file_claims import CheckpointClaimError
from tests.conftest import TINY_FAST, tiny_snnet

NAME = "deit3_small_patch16_224"


def official_deit3_checkpoint(model):
    """The layout of the DeiT3 release: ``{'model': ...}`` with ``gamma_1``/``gamma_2`` layer scales."""
    state = {}
    for k, v in model.state_dict().items():
        state[k.replace("ls1.gamma", "gamma_1").replace("ls2.gamma", "gamma_2")] = v
    return {"model": state}


def test_official_deit3_pth_loads_with_resized_position_embeddings(tmp_path):
    torch.manual_seed(0)
    source = build_anchor(NAME, img_size=64, num_classes=10, **TINY_FAST)  # pretrained at a 4x4 grid
    path = tmp_path / "deit3_tiny.pth"
    torch.save(official_deit3_checkpoint(source), path)
    target = build_anchor(NAME, img_size=(48, 80), pretrained=str(path), **TINY_FAST)  # 3x5 grid, no head
    torch.testing.assert_close(target.blocks[1].ls1.gamma, source.blocks[1].ls1.gamma)
    torch.testing.assert_close(target.blocks[3].attn.qkv.weight, source.blocks[3].attn.qkv.weight)
    assert target.pos_embed.shape == (1, 15, 32)
    # same grid: position embeddings carried over unchanged
    same = build_anchor(NAME, img_size=64, pretrained=str(path), num_classes=10, **TINY_FAST)
    torch.testing.assert_close(same.pos_embed, source.pos_embed)
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(same.eval()(x), source.eval()(x))


def test_timm_safetensors_and_vitdet_without_cls_token(tmp_path):
    source = build_anchor(NAME, img_size=32, **TINY_FAST)
    path = tmp_path / "model.safetensors"
    save_file(source.state_dict(), str(path))
    target = build_anchor(NAME, img_size=32, pretrained=str(path), class_token=False, **TINY_FAST)
    assert target.cls_token is None
    torch.testing.assert_close(target.patch_embed.proj.weight, source.patch_embed.proj.weight)


def test_missing_corrupt_and_wrong_anchor_checkpoints_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        build_anchor(NAME, pretrained=str(tmp_path / "deit3_small.pth"), **TINY_FAST)
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"\x80\x04 not a checkpoint")
    with pytest.raises(RuntimeError, match="could not read checkpoint"):
        build_anchor(NAME, pretrained=str(corrupt), **TINY_FAST)
    wider = tmp_path / "wider.pth"
    torch.save(build_anchor(NAME, img_size=32, embed_dim=48, depth=4, num_heads=3).state_dict(), wider)
    with pytest.raises(RuntimeError, match="does not fit this 32-wide, 4-block ViT: mismatched"):
        build_anchor(NAME, img_size=32, pretrained=str(wider), **TINY_FAST)
    deeper = tmp_path / "deeper.pth"
    torch.save(build_anchor(NAME, img_size=32, embed_dim=32, depth=5, num_heads=2).state_dict(), deeper)
    with pytest.raises(RuntimeError, match="unexpected"):
        build_anchor(NAME, img_size=32, pretrained=str(deeper), **TINY_FAST)
    with pytest.raises(ValueError, match="unknown timm model"):
        build_anchor("deit3_tiny_patch16_999")


def test_snnet_checkpoint_round_trip(tmp_path):
    net = tiny_snnet(lora_rank=4)
    with torch.no_grad():
        net.stitch_s2l[1].lora_up.normal_()
    path = tmp_path / "snnet.pth"
    save_snnet(str(path), net, extra={"iteration": 12})
    other = tiny_snnet(lora_rank=4, seed=1)
    state = load_snnet(str(path), other)
    assert state["iteration"] == 12
    for (k, a), (_, b) in zip(net.state_dict().items(), other.state_dict().items()):
        torch.testing.assert_close(a, b, msg=k)


def test_snnet_checkpoint_errors(tmp_path):
    path = tmp_path / "snnet.pth"
    save_snnet(str(path), tiny_snnet(lora_rank=4))
    with pytest.raises(RuntimeError, match="another SN-Net architecture: lora_rank: checkpoint 4 vs model 8"):
        load_snnet(str(path), tiny_snnet(lora_rank=8))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_snnet(str(tmp_path / "nope.pth"), tiny_snnet())
    truncated = tmp_path / "truncated.pth"
    for size in (0, 100, path.stat().st_size // 2):  # e.g. a write killed or cut short by a full disk
        truncated.write_bytes(path.read_bytes()[:size])
        with pytest.raises(RuntimeError, match=f"could not read SN-Net checkpoint: '{truncated}' is truncated or "
                                               f"corrupt \\({size} bytes"):
            load_snnet(str(truncated), tiny_snnet(lora_rank=4))
    foreign = tmp_path / "foreign.pth"
    torch.save({"model": {}}, foreign)
    with pytest.raises(RuntimeError, match="not an SN-Net checkpoint"):
        load_snnet(str(foreign), tiny_snnet())


class _RunsCode:
    """Unpickling this creates a file: the proof that a load executed the checkpoint's code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_malicious_checkpoint_is_refused_without_running_its_code(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    state = {"format": "snnet-v2", "config": {}, "model": {}, "payload": _RunsCode(str(marker))}
    torch.save(state, evil)
    with pytest.raises(RuntimeError, match="holds Python objects that a weights-only load refuses .*GLOBAL io.open") \
            as info:
        load_snnet(str(evil), tiny_snnet())
    assert not marker.exists()
    assert "weights_only=False" not in str(info.value) and "`weights_only` set to `False`" not in str(info.value)


def test_a_malicious_anchor_checkpoint_is_refused_without_running_its_code(tmp_path):
    from snnet_core import read_state_dict

    marker = tmp_path / "pwned"
    evil = tmp_path / "deit_3_small_224_21k.pth"
    torch.save({"model": {}, "payload": _RunsCode(str(marker))}, evil)
    with pytest.raises(RuntimeError, match="could not read checkpoint: .*weights-only load refuses") as info:
        read_state_dict(str(evil))
    assert not marker.exists() and "weights_only=False" not in str(info.value)
    (tmp_path / "truncated.pth").write_bytes(evil.read_bytes()[:100])
    with pytest.raises(RuntimeError, match="truncated.pth.*truncated or corrupt"):
        read_state_dict(str(tmp_path / "truncated.pth"))


def test_load_snnet_without_a_model_rebuilds_it_from_the_checkpoint(tmp_path):
    net = tiny_snnet(lora_rank=4, route_types=("anchor", "FS", "SF"), lora_alpha=2.0).eval()
    with torch.no_grad():
        for layer in net.stitch_s2l:
            layer.lora_up.normal_()
    path = tmp_path / "snnet.pth"
    save_snnet(str(path), net)
    loaded = load_snnet(str(path))
    assert not loaded.training and loaded.config() == net.config()
    assert loaded.config()["anchor_builds"][1]["depth"] == 8
    x = torch.randn(2, 3, 32, 48)
    for sid in (0, 1, 3, 6):
        loaded.set_stitch(sid)
        out, expected = loaded(x), net(x, stitch_id=sid)
        torch.testing.assert_close(out.tokens, expected.tokens, rtol=0, atol=0)
        for a, b in zip(out.features, expected.features):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(KeyError):
        loaded.set_stitch(8)  # an FSF id: not in this SN-Net's space


def test_load_snnet_without_a_model_says_when_the_anchors_cannot_be_rebuilt(tmp_path):
    from timm.models.vision_transformer import VisionTransformer

    from snnet_core import StitchedViT

    torch.manual_seed(0)
    fast = VisionTransformer(img_size=32, patch_size=16, embed_dim=32, depth=4, num_heads=2, num_classes=0)
    slow = build_anchor(NAME, img_size=32, embed_dim=48, depth=8, num_heads=3)
    net = StitchedViT(fast, slow)
    assert net.config()["anchor_builds"][0] is None
    path = tmp_path / "handmade.pth"
    save_snnet(str(path), net)
    with pytest.raises(RuntimeError, match="cannot rebuild the SN-Net of .*handmade.pth.*fast anchor.*"
                                           "load_snnet\\(path, net\\)"):
        load_snnet(str(path))
    load_snnet(str(path), net)  # with the model: strict, as before


def test_a_checkpoint_without_anchor_builds_still_loads_into_a_model(tmp_path):
    net = tiny_snnet(lora_rank=4)
    path = tmp_path / "old.pth"
    save_snnet(str(path), net)
    state = torch.load(path, weights_only=True)
    del state["config"]["anchor_builds"]  # written before the builds were recorded
    torch.save(state, path)
    load_snnet(str(path), tiny_snnet(lora_rank=4, seed=3))
    with pytest.raises(RuntimeError, match="does not say how to build its fast and slow anchor"):
        load_snnet(str(path))


def deflate_bomb(source, target, claim=64 << 20):
    """A copy of the torch zip checkpoint ``source`` whose largest storage entry is ``claim`` zero bytes,
    deflate-compressed: about ``claim / 1000`` bytes on disk, ``claim`` bytes for ``torch.load`` to allocate."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        storages = [info for info in src.infolist() if re.search(r"/data/\d+$", info.filename)]
        biggest = max(storages, key=lambda info: info.file_size)
        for info in src.infolist():
            if info is not biggest:
                dst.writestr(info, src.read(info))
                continue
            entry = zipfile.ZipInfo(info.filename)
            entry.compress_type = zipfile.ZIP_DEFLATED
            with dst.open(entry, "w", force_zip64=True) as f:
                for _ in range(claim >> 20):
                    f.write(bytes(1 << 20))
    return target


@pytest.fixture
def torch_load_forbidden(monkeypatch):
    """``torch.load`` fails the test: a refused file must be refused before it is read."""
    def read(*args, **kwargs):
        raise AssertionError("torch.load was called on a file that should have been refused before reading")

    monkeypatch.setattr(torch, "load", read)


def test_a_compressed_checkpoint_claiming_far_more_than_the_model_is_refused_before_reading(tmp_path,
                                                                                           torch_load_forbidden):
    saved = tmp_path / "snnet.pth"
    save_snnet(str(saved), tiny_snnet())
    bomb = deflate_bomb(saved, tmp_path / "bomb.pth")
    assert os.path.getsize(bomb) < os.path.getsize(saved) + (1 << 20)  # 64 MiB more claimed, < 1 MiB more on disk
    with pytest.raises(CheckpointClaimError, match=r"SN-Net checkpoint '.*bomb.pth' claims 6[45] MiB of data .*more "
                                                   r"than a checkpoint of this model can hold .*refused before"):
        load_snnet(str(bomb), tiny_snnet())
    # without a model (built from the file): no more than the file holds on disk
    with pytest.raises(CheckpointClaimError, match=r"claims 6[45] MiB of data in [\d.]+ MiB on disk \(its zip entries "
                                                   r"are compressed"):
        load_snnet(str(bomb))
    anchor = build_anchor(NAME, **TINY_FAST)
    torch.save(anchor.state_dict(), tmp_path / "anchor.pth")
    anchor_bomb = deflate_bomb(tmp_path / "anchor.pth", tmp_path / "anchor_bomb.pth")
    with pytest.raises(CheckpointClaimError, match="anchor_bomb.pth' claims 6[45] MiB"):
        build_anchor(NAME, pretrained=str(anchor_bomb), **TINY_FAST)
    with pytest.raises(CheckpointClaimError, match="anchor_bomb.pth' claims 6[45] MiB"):
        read_state_dict(str(anchor_bomb))


def legacy_claiming(path, claim_bytes):
    """A legacy-format (non-zip) torch file of one float32 storage whose pickle states ``claim_bytes`` bytes, cut
    to 4 KB: ``torch.load`` allocates the stated storage before it reads (and misses) the data."""
    numel = 123457  # a distinctive 4-byte pickle integer: the storage's element count and the tensor's size
    torch.save({"w": torch.zeros(numel)}, path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    stated = b"J" + struct.pack("<i", numel)
    assert data.count(stated) == 2
    path.write_bytes(data.replace(stated, b"J" + struct.pack("<i", claim_bytes // 4))[:4096])
    return path


def test_a_legacy_torch_file_stating_larger_storages_than_it_holds_is_refused_before_reading(tmp_path, monkeypatch):
    legacy = tmp_path / "legacy.pth"
    anchor = build_anchor(NAME, **TINY_FAST)
    torch.save(anchor.state_dict(), legacy, _use_new_zipfile_serialization=False)
    assert not zipfile.is_zipfile(legacy)
    assert read_state_dict(str(legacy)).keys() == anchor.state_dict().keys()  # an honest legacy file still loads
    bomb = legacy_claiming(tmp_path / "bomb.pth", 1 << 30)
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load of a file that should be refused"))
    with pytest.raises(CheckpointClaimError, match=r"'.*bomb.pth' claims 1024 MiB of data in 0.0 MiB on disk \(a "
                                                   r"legacy torch file whose pickle states storages larger"):
        load_snnet(str(bomb))
    with pytest.raises(CheckpointClaimError, match=r"'.*bomb.pth' claims 1024 MiB of data .*more than a checkpoint of "
                                                   r"this model can hold"):
        read_state_dict(str(bomb), expected_bytes=sum(t.nbytes for t in anchor.state_dict().values()))


def test_a_legacy_torch_file_cut_inside_its_pickle_is_named_truncated(tmp_path):
    legacy = tmp_path / "legacy.pth"
    torch.save({"w": torch.zeros(10)}, legacy, _use_new_zipfile_serialization=False)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(legacy.read_bytes()[:120])  # inside the pickle: torch's reader raises IndexError there
    with pytest.raises(RuntimeError, match=r"'.*cut.pth' is truncated or corrupt \(120 bytes; IndexError"):
        read_state_dict(str(cut))


def test_a_directory_given_as_checkpoint_names_the_file_to_give(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(IsADirectoryError, match=r"'.*run' is a directory, not a checkpoint file: it holds no "
                                                r"\.pth/\.pkl/\.safetensors file"):
        load_snnet(str(run), tiny_snnet())
    save_snnet(str(run / "model_0000009.pth"), tiny_snnet())
    with pytest.raises(IsADirectoryError, match=r"give a file in it, e.g. '.*run/model_0000009.pth'"):
        read_state_dict(str(run))
    (run / "last_checkpoint").write_text("model_final.pth")
    with pytest.raises(IsADirectoryError, match=r"give a file in it, e.g. '.*run/model_final.pth'"):
        load_snnet(str(run))


def test_a_cuda_load_without_a_gpu_says_so_and_not_that_the_file_is_corrupt(tmp_path):
    path = tmp_path / "snnet.pth"
    save_snnet(str(path), tiny_snnet())
    exc = RuntimeError("Attempting to deserialize object on a CUDA device but torch.cuda.is_available() is False. "
                       "If you are running on a CPU-only machine, please use torch.load with map_location=...")
    message = describe_load_error(str(path), exc)
    assert "no GPU" in message and "--device cpu" in message and "corrupt" not in message, message
    if not torch.cuda.is_available():  # the real error on this machine
        with pytest.raises(RuntimeError, match=r"no GPU torch can use.*not at fault. Load it on the CPU \(the "
                                                r"demos' --device cpu, the training scripts' train.device=cpu\)"):
            load_snnet(str(path), map_location="cuda")


def test_read_checkpoint_file_names_the_file_and_admits_only_the_classes_allowed(tmp_path):
    import argparse

    from snnet_core.model.checkpoint import read_checkpoint_file

    path = str(tmp_path / "upstream.pth")
    torch.save({"model": {"w": torch.ones(2)}, "args": argparse.Namespace(lr=3e-5)}, path)
    with pytest.raises(RuntimeError, match=r"could not read the classification checkpoint: .*upstream\.pth"):
        read_checkpoint_file(path, "classification checkpoint")
    assert read_checkpoint_file(path, allowed=[argparse.Namespace])["args"].lr == 3e-5
    with open(path, "r+b") as f:
        f.truncate(40)
    with pytest.raises(RuntimeError, match=r"could not read the checkpoint: .*truncated or corrupt"):
        read_checkpoint_file(path)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        read_checkpoint_file(str(tmp_path / "missing.pth"))
