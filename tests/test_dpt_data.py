"""NYUv2 readers (labeled .mat and sync layouts, raw vs in-painted ground truth), the synthetic generator and the
training augmentation."""
import os

import cv2
import h5py
import numpy as np
import pytest
import scipy.io
import torch

from datasets.make_synthetic_nyu import make_synthetic_nyu, render_frame
from projects.snnet_dpt.loss import SILogLoss
from projects.snnet_dpt.metrics import DepthMetricAccumulator
from projects.snnet_dpt.nyu import NYUv2Labeled, NYUv2Sync, build_nyu_split, check_depth_values, shared_frames
from projects.snnet_dpt.transforms import DepthDataset, TrainAugmentation

H, W = 48, 64  # asymmetric on purpose: a transposed axis changes the shape


def asymmetric_frame():
    """image[y, x, c] and depth[y, x] that differ under any transpose or flip."""
    y, x = np.mgrid[0:H, 0:W]
    image = np.stack([(3 * y + x) % 256, (y * x) % 256, np.where((y < 10) & (x < 20), 255, 0)], -1).astype(np.uint8)
    depth = (1.0 + 0.05 * y + 0.01 * x).astype(np.float32)
    return image, depth


def write_matlab_style_h5(path, images, depth_maps):
    """What MATLAB v7.3 writes for images(H, W, 3, N) and each ``depth_maps`` key(H, W, N): h5py sees the axes
    reversed, so element [n, c, x, y] of 'images' is pixel (y, x) channel c of frame n and element [n, x, y] of
    a depth dataset is pixel (y, x) of frame n (written element-wise here). ``images`` [(H, W, 3)],
    ``depth_maps`` {key: [(H, W)]}."""
    stacks = {"images": np.zeros((len(images), 3, W, H), np.uint8)}
    stacks.update({key: np.zeros((len(maps), W, H), np.float32) for key, maps in depth_maps.items()})
    for yy in range(H):
        for xx in range(W):
            for i, image in enumerate(images):
                stacks["images"][i, :, xx, yy] = image[yy, xx]
            for key, maps in depth_maps.items():
                for i, depth in enumerate(maps):
                    stacks[key][i, xx, yy] = depth[yy, xx]
    with h5py.File(path, "w") as f:
        for key, stack in stacks.items():
            f[key] = stack


def raw_and_filled_frames():
    """Three frames whose raw depth differs from the filled one at every pixel: holes (0) in a few places, an
    offset elsewhere. Returns ``images``, ``raw``, ``filled`` (lists of arrays)."""
    image, depth = asymmetric_frame()
    images = [image, 255 - image, image // 2]
    filled = [depth, depth + 2.0, depth * 0.5]
    raw = [d + 0.25 for d in filled]
    for k, r in enumerate(raw):
        r[3 + k:9 + k, 40:47] = 0  # a sensor hole, in a different place in every frame
        r[0, 5 * k] = 0
    return images, raw, filled


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("nyu_synth"))
    splits = make_synthetic_nyu(root, num_train=6, num_test=3, size=(H, W), seed=3)
    return root, splits


@pytest.fixture
def labeled_root(tmp_path):
    """A data root with the official file names: 3 frames with 'rawDepths' and 'depths'; train = frames 1, 3
    and test = frame 2 (1-based)."""
    images, raw, filled = raw_and_filled_frames()
    write_matlab_style_h5(tmp_path / "nyu_depth_v2_labeled.mat", images, {"rawDepths": raw, "depths": filled})
    scipy.io.savemat(tmp_path / "splits.mat", {"trainNdxs": np.array([[1.0], [3.0]]), "testNdxs": np.array([[2.0]])})
    return tmp_path, images, raw, filled


def test_labeled_reader_orientation_and_split_indices(labeled_root):
    root, images, raw, _ = labeled_root
    train = NYUv2Labeled(str(root / "nyu_depth_v2_labeled.mat"), str(root / "splits.mat"), "train")
    test = NYUv2Labeled(str(root / "nyu_depth_v2_labeled.mat"), str(root / "splits.mat"), "test")
    assert len(train) == 2 and len(test) == 1 and train.size == (H, W)
    got_image, got_depth = train.read(1)  # 1-based frame 3
    assert got_image.shape == (H, W, 3) and got_image.dtype == np.uint8
    assert got_depth.shape == (H, W) and got_depth.dtype == np.float32
    np.testing.assert_array_equal(got_image, images[2])
    np.testing.assert_array_equal(got_depth, raw[2])
    np.testing.assert_array_equal(test.read(0)[0], images[1])  # 1-based frame 2


def test_test_split_ground_truth_is_raw_depths_by_default(labeled_root):
    root, _, raw, filled = labeled_root
    assert (raw[1] == 0).sum() > 40 and (raw[1] != filled[1]).all()  # the two sources differ at every pixel
    _, depth = build_nyu_split("mat", str(root), "test").read(0)  # 1-based frame 2
    np.testing.assert_array_equal(depth, raw[1])  # holes (0) included
    _, depth = build_nyu_split("mat", str(root), "train").read(0)  # raw for training too (the sync recipe)
    np.testing.assert_array_equal(depth, raw[0])


def test_depth_source_filled_reads_the_inpainted_depths(labeled_root):
    root, _, _, filled = labeled_root
    for split, i, frame in (("test", 0, 1), ("train", 1, 2)):
        _, depth = build_nyu_split("mat", str(root), split, depth_source="filled").read(i)
        np.testing.assert_array_equal(depth, filled[frame])
        assert (depth > 0).all()


def test_raw_holes_count_neither_in_metrics_nor_in_loss(labeled_root):
    root = labeled_root[0]
    _, gt = DepthDataset(build_nyu_split("mat", str(root), "test"))[0]
    gt = gt[None]  # (1, 1, H, W)
    holes = gt == 0
    assert holes.sum() > 40
    pred = torch.where(holes, torch.full_like(gt, 9.0), gt)  # exact where measured, far off in the holes
    metrics = DepthMetricAccumulator(eigen_crop=False)
    metrics.update(pred, gt)
    result = metrics.compute()
    assert result["abs_rel"] == 0 and result["rmse"] == 0 and result["a1"] == 1
    assert SILogLoss(warmup_iters=0)(pred, gt, iteration=0).item() == pytest.approx(0, abs=1e-6)


def test_missing_depth_dataset_names_the_file_the_key_and_the_switch(tmp_path):
    images, raw, filled = raw_and_filled_frames()
    scipy.io.savemat(tmp_path / "splits.mat", {"trainNdxs": np.array([[1.0]]), "testNdxs": np.array([[2.0]])})
    write_matlab_style_h5(tmp_path / "filled_only.mat", images, {"depths": filled})
    with pytest.raises(ValueError, match=r"filled_only\.mat.* no \['rawDepths'\].*depth_source='filled'"):
        NYUv2Labeled(str(tmp_path / "filled_only.mat"), str(tmp_path / "splits.mat"), "test")
    _, depth = NYUv2Labeled(str(tmp_path / "filled_only.mat"), str(tmp_path / "splits.mat"), "test", "filled").read(0)
    np.testing.assert_array_equal(depth, filled[1])
    write_matlab_style_h5(tmp_path / "raw_only.mat", images, {"rawDepths": raw})
    with pytest.raises(ValueError, match=r"raw_only\.mat.* no \['depths'\].*depth_source='raw'"):
        NYUv2Labeled(str(tmp_path / "raw_only.mat"), str(tmp_path / "splits.mat"), "test", "filled")
    with pytest.raises(ValueError, match="depth_source must be one of"):
        NYUv2Labeled(str(tmp_path / "raw_only.mat"), str(tmp_path / "splits.mat"), "test", "inpainted")


def test_sync_reader_orientation_rgb_order_and_millimetres(tmp_path):
    image, depth = asymmetric_frame()
    os.makedirs(tmp_path / "sync" / "room")
    cv2.imwrite(str(tmp_path / "sync" / "room" / "rgb_0.png"), image[..., ::-1])  # cv2 writes BGR
    depth_mm = np.round(depth * 1000).astype(np.uint16)
    depth_mm[5, 7] = 0  # a sensor hole
    cv2.imwrite(str(tmp_path / "sync" / "room" / "depth_0.png"), depth_mm)
    (tmp_path / "train.txt").write_text("/room/rgb_0.png /room/depth_0.png 518.8579\n\n")
    frames = NYUv2Sync(str(tmp_path / "sync"), str(tmp_path / "train.txt"))
    got_image, got_depth = frames.read(0)
    np.testing.assert_array_equal(got_image, image)
    assert got_image[0, 0, 2] == 255 and got_image[0, 0, 0] == 0  # blue patch top-left, RGB order
    assert got_depth.dtype == np.float32 and got_depth[5, 7] == 0
    np.testing.assert_allclose(got_depth[got_depth > 0], depth[got_depth > 0], atol=5e-4)


def test_generated_labeled_file_is_matlab_v73_with_the_official_layout(synthetic):
    root, splits = synthetic
    mat = os.path.join(root, "nyu_depth_v2_labeled.mat")
    assert scipy.io.matlab.matfile_version(mat) == (2, 0)  # scipy recognises the v7.3 (HDF5) header
    with h5py.File(mat, "r") as f:
        assert f["images"].shape == (9, 3, W, H) and f["images"].dtype == np.uint8
        assert f["depths"].shape == f["rawDepths"].shape == (9, W, H)
        filled, raw = f["depths"][:], f["rawDepths"][:]
    assert (filled > 0).all()
    for i in range(9):  # every frame has sensor holes; elsewhere the raw depth is the filled one
        holes = raw[i] == 0
        assert holes.any() and holes.mean() < 0.2
        np.testing.assert_array_equal(raw[i][~holes], filled[i][~holes])
    s = scipy.io.loadmat(os.path.join(root, "splits.mat"))
    assert sorted(s["testNdxs"].ravel().astype(int) - 1) == splits["test"]
    assert sorted(s["trainNdxs"].ravel().astype(int) - 1) == splits["train"]


def test_both_generated_layouts_hold_the_same_frames(synthetic):
    root, splits = synthetic
    for split in ("train", "test"):
        mat, sync = build_nyu_split("mat", root, split), build_nyu_split("sync", root, split)
        filled = build_nyu_split("mat", root, split, depth_source="filled")
        assert len(mat) == len(sync) == len(filled) == len(splits[split])
        for i in range(len(mat)):
            (mi, md), (si, sd), (_, fd) = mat.read(i), sync.read(i), filled.read(i)
            expected_image, expected_depth = render_frame(splits[split][i], (H, W), seed=3)
            np.testing.assert_array_equal(mi, expected_image)
            np.testing.assert_array_equal(fd, expected_depth)
            holes = md == 0
            assert holes.any() and holes.mean() < 0.2  # raw by default: a few sensor holes
            np.testing.assert_array_equal(md[~holes], expected_depth[~holes])
            assert np.abs(si.astype(int) - mi.astype(int)).mean() < 8  # JPEG of a noisy 48x64 frame
            # the sync PNGs are the .mat's rawDepths truncated to millimetres (BTS's extraction), holes included
            np.testing.assert_array_equal(sd == 0, holes)
            assert (sd <= md).all() and (md - sd).max() < 1e-3


def test_generated_depth_is_metric_and_learnable_from_brightness(synthetic):
    root, _ = synthetic
    image, depth = build_nyu_split("mat", root, "train", depth_source="filled").read(0)  # dense rendering
    assert 0.5 < depth.min() and depth.max() < 10
    brightness = image.astype(float).mean(-1).ravel()
    assert np.corrcoef(brightness, depth.ravel())[0, 1] < -0.3  # farther is darker


def test_labeled_reader_errors(tmp_path, synthetic):
    root, _ = synthetic
    with pytest.raises(FileNotFoundError, match="nyu_depth_v2_labeled.mat"):
        build_nyu_split("mat", str(tmp_path), "train")
    image, depth = asymmetric_frame()
    write_matlab_style_h5(tmp_path / "wrong.mat", [image], {"depth": [depth]})
    with pytest.raises(ValueError, match=r"no \['rawDepths'\].*found \['depth', 'images'\]"):
        NYUv2Labeled(str(tmp_path / "wrong.mat"), os.path.join(root, "splits.mat"), "train")
    scipy.io.savemat(tmp_path / "v5.mat", {"depths": depth})
    with pytest.raises(ValueError, match="not a MATLAB v7.3"):
        NYUv2Labeled(str(tmp_path / "v5.mat"), os.path.join(root, "splits.mat"), "train")
    mat = os.path.join(root, "nyu_depth_v2_labeled.mat")
    scipy.io.savemat(tmp_path / "big.mat", {"trainNdxs": np.array([[1.0], [10.0]]), "testNdxs": np.array([[2.0]])})
    with pytest.raises(IndexError, match="frame number 10.*9 frames"):
        NYUv2Labeled(mat, str(tmp_path / "big.mat"), "train")
    scipy.io.savemat(tmp_path / "zero.mat", {"trainNdxs": np.array([[0.0]]), "testNdxs": np.array([[2.0]])})
    with pytest.raises(IndexError, match="1-based"):
        NYUv2Labeled(mat, str(tmp_path / "zero.mat"), "train")
    scipy.io.savemat(tmp_path / "keys.mat", {"train": np.array([[1.0]])})
    with pytest.raises(ValueError, match="no 'testNdxs'"):
        NYUv2Labeled(mat, str(tmp_path / "keys.mat"), "test")
    with pytest.raises(ValueError, match="split must be"):
        NYUv2Labeled(mat, os.path.join(root, "splits.mat"), "val")


def test_sync_reader_errors(tmp_path, synthetic):
    root, _ = synthetic
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        NYUv2Sync(os.path.join(root, "sync"), str(tmp_path / "missing.txt"))
    (tmp_path / "bad.txt").write_text("a.jpg b.png 518.8\nonly_two fields\n")
    with pytest.raises(ValueError, match=r"bad.txt:2"):
        NYUv2Sync(os.path.join(root, "sync"), str(tmp_path / "bad.txt"))
    (tmp_path / "gone.txt").write_text("/room/rgb_9.jpg /room/sync_depth_9.png 518.8\n")
    with pytest.raises(FileNotFoundError, match="rgb_9.jpg"):
        NYUv2Sync(os.path.join(root, "sync"), str(tmp_path / "gone.txt"))
    with pytest.raises(ValueError, match="layout"):
        build_nyu_split("kitti", root, "train")
    with pytest.raises(ValueError, match="depth_source='filled' needs layout 'mat'"):
        build_nyu_split("sync", root, "test", depth_source="filled")


def test_an_undecodable_image_names_itself_and_its_list_file(tmp_path):
    (tmp_path / "room").mkdir()
    (tmp_path / "room" / "rgb_1.jpg").write_bytes(b"\xff\xd8 cut short by a full disk")
    cv2.imwrite(str(tmp_path / "room" / "sync_depth_1.png"), np.full((4, 4), 1000, np.uint16))
    (tmp_path / "train.txt").write_text("/room/rgb_1.jpg /room/sync_depth_1.png 518.8\n")
    frames = NYUv2Sync(str(tmp_path), str(tmp_path / "train.txt"))
    with pytest.raises(OSError, match=r"rgb_1.jpg' is not a decodable image .*listed in '.*train.txt': restore"):
        frames.read(0)


def test_float_images_and_non_finite_depth_in_the_mat_are_refused_with_file_and_frame(labeled_root, tmp_path):
    root, images, raw, _ = labeled_root
    float_images = [im.astype(np.float64) / 255 for im in images]  # what a hand-converted file may hold
    with h5py.File(tmp_path / "float.mat", "w") as f:
        f["images"] = np.stack([im.transpose(2, 1, 0) for im in float_images])
        f["rawDepths"] = np.stack([d.T for d in raw])
    with pytest.raises(ValueError, match=r"float\.mat.*'images' is float64, expected uint8 \(0-255\)"):
        NYUv2Labeled(str(tmp_path / "float.mat"), str(root / "splits.mat"), "train")
    with h5py.File(root / "nyu_depth_v2_labeled.mat", "r+") as f:
        f["rawDepths"][2, 10, 5] = np.inf  # frame 3 (1-based), the second training frame
    frames = build_nyu_split("mat", str(root), "train")
    frames.read(0)
    with pytest.raises(ValueError, match=r"frame 3 \(1-based\) of 'rawDepths' holds 1 non-finite values"):
        frames.read(1)


def test_depth_in_another_unit_or_without_measurement_is_refused(synthetic, tmp_path):
    root, _ = synthetic
    frames = build_nyu_split("mat", root, "train")
    check_depth_values(frames, max_depth=10.0)  # metres: accepted
    loaded = [frames.read(i) for i in range(len(frames))]

    class Scaled:
        source = "scaled.mat"

        def __init__(self, scale):
            self.scale = scale

        def __len__(self):
            return len(loaded)

        def read(self, i):
            return loaded[i][0], loaded[i][1] * self.scale

    with pytest.raises(ValueError, match=r"scaled.mat, frames \[1, 2, 3, 4, 5, 6\].*median depth \d+ is above "
                                         r"model.max_depth=10.0 m; the depth looks like millimetres"):
        check_depth_values(Scaled(1000.0), max_depth=10.0)
    with pytest.raises(ValueError, match=r"below 0.1 m; the depth looks like metres written where millimetres"):
        check_depth_values(Scaled(1e-3), max_depth=10.0)
    with pytest.raises(ValueError, match=r"the depth is 0 \(no measurement\) everywhere"):
        check_depth_values(Scaled(0.0), max_depth=10.0)


def test_overlapping_splits_are_found_in_both_layouts(synthetic, tmp_path):
    root, _ = synthetic
    for layout in ("mat", "sync"):
        assert shared_frames(build_nyu_split(layout, root, "train"), build_nyu_split(layout, root, "test")) == []
    scipy.io.savemat(tmp_path / "splits.mat", {"trainNdxs": np.array([[1.0], [2.0], [3.0]]),
                                               "testNdxs": np.array([[3.0], [4.0]])})
    mat = os.path.join(root, "nyu_depth_v2_labeled.mat")
    shared = shared_frames(NYUv2Labeled(mat, str(tmp_path / "splits.mat"), "train"),
                           NYUv2Labeled(mat, str(tmp_path / "splits.mat"), "test"))
    assert shared == [f"{os.path.realpath(mat)}:3"]
    train_list = os.path.join(root, "nyudepthv2_train_files_with_gt.txt")
    sync_train = build_nyu_split("sync", root, "train")
    assert len(shared_frames(sync_train, NYUv2Sync(os.path.join(root, "sync"), train_list))) == len(sync_train)


def test_train_augmentation_keeps_image_and_depth_aligned():
    y, x = np.mgrid[0:H, 0:W]
    depth = (1.0 + 0.05 * y + 0.1 * x).astype(np.float32)  # the image encodes its depth
    image = np.repeat((depth * 20).astype(np.uint8)[..., None], 3, -1)
    aug = TrainAugmentation(crop_size=(32, 48), rotate_prob=0.0, flip_prob=1.0, color_prob=0.0)
    img_t, depth_t = aug(image, depth, np.random.default_rng(0))
    assert img_t.shape == (3, 32, 48) and depth_t.shape == (1, 32, 48)
    assert depth_t[0, 0, 0] > depth_t[0, 0, -1]  # flipped: depth grows to the left
    np.testing.assert_allclose((img_t[0] * 127.5 + 127.5).numpy(), (depth_t[0] * 20).floor().numpy(), atol=1e-3)
    rotated = TrainAugmentation(crop_size=(40, 56), rotate_prob=1.0, rotate_degrees=2.5, flip_prob=0.0, color_prob=0.0)
    img_t, depth_t = rotated(image, depth, np.random.default_rng(1))
    valid = depth_t[0] > 0
    err = ((img_t[0] * 127.5 + 127.5) - depth_t[0] * 20).abs()[valid]
    assert (err < 3).float().mean() > 0.9  # bilinear vs nearest differ only at a few pixels


def test_augmentation_is_a_function_of_seed_epoch_and_index(synthetic):
    root, _ = synthetic
    dataset = DepthDataset(build_nyu_split("sync", root, "train"), TrainAugmentation(crop_size=(32, 48)), seed=5)
    first = dataset[2]
    assert torch.equal(first[0], dataset[2][0])
    dataset.set_epoch(1)
    assert not torch.equal(first[0], dataset[2][0])
    dataset.set_epoch(0)
    assert torch.equal(first[1], dataset[2][1])
    plain = DepthDataset(build_nyu_split("sync", root, "test"))[0]
    assert plain[0].shape == (3, H, W) and plain[0].min() >= -1 and plain[0].max() <= 1
