"""Segmentation data (projects/snnet_setr): the ADE20K and COCO-Stuff-10K preparation scripts, the synthetic
generator, dataset registration, mmseg's training pipeline as detectron2 augmentations, the checks before training,
the resumable loader and mIoU / mAcc / aAcc against a direct computation from files on disk."""
import io
import itertools
import os
import shutil

import cv2
import detectron2.data.transforms as T
import h5py
import numpy as np
import pytest
import scipy.io
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from datasets.make_synthetic_nyu import MAT_HEADER_BYTES, mat73_header
from datasets.make_synthetic_segmentation import SYNTHETIC_CLASSES, make_synthetic_segmentation
from datasets.prepare_ade20k import prepare_ade20k
from datasets.prepare_coco_stuff10k import prepare_coco_stuff10k, read_mat_labels
from projects.snnet_setr.classes import COCO_STUFF_CLASSES, COCO_STUFF_IDS, COCO_STUFF_PALETTE
from projects.snnet_setr.data import check_sem_seg_datasets, register_sem_seg_dataset
from projects.snnet_setr.metrics import SemSegMetrics
from projects.snnet_setr.transforms import (
    CategoryCappedCrop,
    PadToSize,
    PhotoMetricDistortion,
    RandomRescale,
    photometric_distortion,
)
from snnet_core.training.data_order import build_resumable_train_loader

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOADER_CONFIGS = os.path.join(REPO, "projects", "snnet_setr", "configs", "common")


def write_png(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)


def labels_of(path):
    return np.asarray(Image.open(path))


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """Both layouts of the synthetic generator (4 train + 2 val images each), registered."""
    out = tmp_path_factory.mktemp("synthetic_seg")
    roots = {layout: make_synthetic_segmentation(str(out / layout), layout, num_train=4, num_val=2, seed=0)
             for layout in ("ade20k", "coco_stuff10k")}
    names = {layout: register_sem_seg_dataset(f"test_{layout}", root, layout) for layout, root in roots.items()}
    return roots, names


def copy_registered(synthetic, tmp_path, layout="ade20k"):
    """A copy of a synthetic dataset folder to damage, registered as ``damaged_<layout>_{train,...}``."""
    root = str(tmp_path / os.path.basename(synthetic[0][layout]))
    shutil.copytree(synthetic[0][layout], root)
    return root, register_sem_seg_dataset(f"damaged_{layout}", root, layout)


# --- preparation ------------------------------------------------------------------------------------
def raw_ade20k(root, labels_by_split):
    for split, labels in labels_by_split.items():
        for i, label in enumerate(labels):
            name = f"ADE_{split}_{i:08d}"
            write_png(os.path.join(root, "annotations", split, name + ".png"), label)
            os.makedirs(os.path.join(root, "images", split), exist_ok=True)
            cv2.imwrite(os.path.join(root, "images", split, name + ".jpg"), np.zeros(label.shape + (3,), np.uint8))


def test_prepare_ade20k_reduces_zero_label_once_and_refuses_a_half_prepared_output(tmp_path):
    root = str(tmp_path / "ADEChallengeData2016")
    raw = np.array([[0, 1, 2], [37, 149, 150]], np.uint8)
    raw_ade20k(root, {"training": [raw, raw[::-1]], "validation": [raw.T.copy()]})
    assert prepare_ade20k(root) == {"training": 2, "validation": 1}
    out = os.path.join(root, "annotations_detectron2", "training", "ADE_training_00000000.png")
    np.testing.assert_array_equal(labels_of(out), [[255, 0, 1], [36, 148, 149]])  # 0 -> 255, k -> k - 1
    np.testing.assert_array_equal(
        labels_of(os.path.join(root, "annotations_detectron2", "validation", "ADE_validation_00000000.png")),
        [[255, 36], [0, 148], [1, 149]])
    before = os.stat(out).st_mtime_ns
    assert prepare_ade20k(root) == {"training": 2, "validation": 1}  # complete: nothing written
    assert os.stat(out).st_mtime_ns == before
    os.remove(os.path.join(root, "annotations_detectron2", "PREPARED.json"))  # as an interrupted run leaves it
    with pytest.raises(FileExistsError, match="annotations_detectron2 exists but is not a complete"):
        prepare_ade20k(root)
    assert prepare_ade20k(root, overwrite=True) == {"training": 2, "validation": 1}


def test_prepare_ade20k_names_bad_inputs(tmp_path):
    root = str(tmp_path / "ADEChallengeData2016")
    with pytest.raises(FileNotFoundError, match="images/training does not exist: give the ADEChallengeData2016"):
        prepare_ade20k(root)
    raw_ade20k(root, {"training": [np.ones((4, 4), np.uint8)] * 2, "validation": [np.full((4, 4), 151, np.uint8)]})
    with pytest.raises(ValueError, match="ADE_validation_00000000.png holds label 151, above ADE20K's 150"):
        prepare_ade20k(root)
    assert not os.path.exists(os.path.join(root, "annotations_detectron2"))  # nothing half-written is left
    os.remove(os.path.join(root, "annotations", "training", "ADE_training_00000000.png"))
    with pytest.raises(FileNotFoundError, match="image .*ADE_training_00000000.jpg has no annotation"):
        prepare_ade20k(root)


def write_mat73(path, labels):
    """``labels`` (H, W) as MATLAB v7.3 stores a variable S: HDF5 behind the MAT header, axes reversed."""
    buffer = io.BytesIO()
    with h5py.File(buffer, "w", userblock_size=MAT_HEADER_BYTES) as f:
        f.create_dataset("S", data=labels.T)
    header = mat73_header()
    buffer.getbuffer()[:len(header)] = header
    with open(path, "wb") as f:
        f.write(buffer.getvalue())


def test_prepare_coco_stuff10k_maps_the_171_used_ids_as_mmseg(tmp_path):
    root = str(tmp_path / "cocostuff-10k-v1.1")
    for folder in ("images", "annotations", "imageLists"):
        os.makedirs(os.path.join(root, folder))
    # 0 unlabeled; 12, 26, 91: ids never annotated; 1, 11, 13, 92, 157, 182: used
    raw = np.array([[0, 1, 11, 12], [13, 26, 91, 92], [157, 182, 1, 0]], np.uint8)
    expected = [[255, 0, 10, 255], [11, 255, 255, 80], [145, 170, 0, 255]]
    scipy.io.savemat(os.path.join(root, "annotations", "a.mat"), {"S": raw})
    write_mat73(os.path.join(root, "annotations", "b.mat"), raw.astype(np.uint16))
    for name in ("a", "b"):
        cv2.imwrite(os.path.join(root, "images", name + ".jpg"), np.zeros((3, 4, 3), np.uint8))
    for split, name in (("train", "a"), ("test", "b")):
        with open(os.path.join(root, "imageLists", f"{split}.txt"), "w") as f:
            f.write(name + "\n")
    assert prepare_coco_stuff10k(root) == {"train": 1, "test": 1}
    for split, name in (("train", "a"), ("test", "b")):  # v5 through scipy, v7.3 through h5py: the same labels
        np.testing.assert_array_equal(labels_of(os.path.join(root, "annotations_detectron2", split, name + ".png")),
                                      expected)
    assert COCO_STUFF_CLASSES[10] == "fire hydrant" and COCO_STUFF_CLASSES[11] == "stop sign"  # ids 11, 13
    assert COCO_STUFF_CLASSES[80] == "banner" and COCO_STUFF_CLASSES[145] == "sky-other"  # ids 92, 157
    assert len(COCO_STUFF_IDS) == len(COCO_STUFF_CLASSES) == len(COCO_STUFF_PALETTE) == 171

    scipy.io.savemat(os.path.join(root, "annotations", "a.mat"), {"labels": raw})
    with pytest.raises(ValueError, match=r"a.mat holds no 'S' label map \(keys: \['labels'\]\)"):
        read_mat_labels(os.path.join(root, "annotations", "a.mat"))
    os.remove(os.path.join(root, "images", "b.jpg"))
    with pytest.raises(FileNotFoundError, match=r"test.txt do not exist: .*images/b.jpg"):
        prepare_coco_stuff10k(root, overwrite=True)


# --- synthetic generator and registration ---------------------------------------------------------------
def test_synthetic_sets_hold_real_class_ids_in_both_layouts_and_repeat(synthetic, tmp_path):
    roots, names = synthetic
    ade_ids = {c.ade20k_id - 1 for c in SYNTHETIC_CLASSES} | {255}
    coco_ids = {COCO_STUFF_IDS.index(c.coco_stuff_id) for c in SYNTHETIC_CLASSES} | {255}
    for layout, ids, num_classes in (("ade20k", ade_ids, 150), ("coco_stuff10k", coco_ids, 171)):
        dicts = [d for name in names[layout] for d in DatasetCatalog.get(name)]
        assert len(dicts) == 6
        found = set().union(*(np.unique(labels_of(d["sem_seg_file_name"])).tolist() for d in dicts))
        assert found <= ids and len(found) >= 4
        meta = MetadataCatalog.get(names[layout][0])
        assert (len(meta.stuff_classes), len(meta.stuff_colors), meta.ignore_label, meta.evaluator_type) == (
            num_classes, num_classes, 255, "sem_seg")
    again = make_synthetic_segmentation(str(tmp_path / "again"), "coco_stuff10k", num_train=4, num_val=2, seed=0)
    for folder, _, files in os.walk(roots["coco_stuff10k"]):
        for name in files:
            if name != "PREPARED.json":
                path = os.path.join(folder, name)
                with open(path, "rb") as a, open(os.path.join(again, os.path.relpath(path, roots["coco_stuff10k"])),
                                                 "rb") as b:
                    assert a.read() == b.read(), path
    with pytest.raises(FileExistsError, match="cocostuff-10k-v1.1 already exists: pass --overwrite"):
        make_synthetic_segmentation(str(tmp_path / "again"), "coco_stuff10k", num_train=4, num_val=2)


def test_builtin_names_carry_the_dataset_metadata():
    for name, classes in (("ade20k_sem_seg_val", 150), ("coco_stuff_10k_sem_seg_test", 171)):
        meta = MetadataCatalog.get(name)
        assert (len(meta.stuff_classes), len(meta.stuff_colors), meta.ignore_label, meta.evaluator_type) == (
            classes, classes, 255, "sem_seg")
    assert MetadataCatalog.get("coco_stuff_10k_sem_seg_test").stuff_colors[145] == list(COCO_STUFF_PALETTE[145])


# --- mapper and augmentations ------------------------------------------------------------------------
def train_mapper(crop=64, scale=(256, 64)):
    cfg = LazyConfig.load(os.path.join(LOADER_CONFIGS, "synthetic_loader.py"))
    assert cfg.dataloader.train.mapper.augmentations[1].crop_size == [crop, crop]
    return instantiate(cfg.dataloader.train.mapper), instantiate(cfg.dataloader.test.mapper)


def test_mapper_outputs_and_test_resize(synthetic):
    _, names = synthetic
    train, test = train_mapper()
    item = DatasetCatalog.get(names["ade20k"][0])[0]
    h, w = labels_of(item["sem_seg_file_name"]).shape
    for seed in range(3):
        np.random.seed(seed)
        out = train(item)
        assert out["image"].dtype == torch.uint8 and out["image"].shape == (3, 64, 64)
        assert out["sem_seg"].dtype == torch.int64 and out["sem_seg"].shape == (64, 64)
        assert (out["height"], out["width"], out["file_name"]) == (h, w, item["file_name"])
    out = test(item)  # mmseg's Resize(scale=(256, 64), keep_ratio=True) of the image alone
    factor = min(256 / max(h, w), 64 / min(h, w))
    assert out["image"].shape == (3, int(h * factor + 0.5), int(w * factor + 0.5))
    np.testing.assert_array_equal(out["sem_seg"].numpy(), labels_of(item["sem_seg_file_name"]))
    assert (out["height"], out["width"]) == (h, w)
    bgr = cv2.resize(cv2.imread(item["file_name"]), (out["image"].shape[2], out["image"].shape[1]),
                     interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(out["image"].permute(1, 2, 0).numpy(), bgr)  # BGR, cv2 bilinear


def apply(augmentation, image, labels):
    aug_input = T.AugInput(image.copy(), sem_seg=labels.copy())
    augmentation(aug_input)
    return aug_input.image, aug_input.sem_seg


def gradient_image(h, w):
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([(7 * x + y) % 256, (3 * y) % 256, (x * y) % 256], -1).astype(np.uint8)


def test_random_rescale_keeps_the_ratio_within_the_drawn_scale():
    image, labels = gradient_image(30, 40), (np.arange(1200) % 5).reshape(30, 40).astype(np.uint8)
    out, out_labels = apply(RandomRescale((256, 64)), image, labels)
    assert out.shape == (64, 85, 3) and out_labels.shape == (64, 85)  # min(256/40, 64/30) = 2.133
    assert set(np.unique(out_labels)) <= set(range(5))  # nearest: no new label values
    for seed in range(20):
        np.random.seed(seed)
        out, _ = apply(RandomRescale((256, 64), ratio_range=(0.5, 2.0)), image, labels)
        assert 32 <= out.shape[0] <= 128 and abs(out.shape[1] / out.shape[0] - 4 / 3) < 0.05  # short side 64 x ratio


def test_category_capped_crop_rejects_windows_dominated_by_one_class():
    # left half class 0, right half classes 1 (top) and 2 (bottom); a 20x20 window at x0 has (20 - x0) / 20 of
    # class 0: under 0.75 only for x0 >= 6
    labels = np.zeros((20, 40), np.uint8)
    labels[:10, 20:], labels[10:, 20:] = 1, 2
    image = gradient_image(20, 40)
    starts = {True: [], False: []}
    for capped in (True, False):
        for seed in range(60):
            np.random.seed(seed)
            crop = CategoryCappedCrop((20, 20), 0.75 if capped else 1.0).get_transform(image, labels)
            assert (crop.w, crop.h) == (20, 20)
            starts[capped].append(crop.x0)
    assert min(starts[True]) >= 6
    assert min(starts[False]) < 6  # the same draws without the cap do take such windows
    ignored = labels.copy()
    ignored[:, :20] = 255  # ignored pixels are not counted: any window with both classes passes
    np.random.seed(0)
    out, out_labels = apply(CategoryCappedCrop((20, 20), 0.75), image, ignored)
    assert out.shape == (20, 20, 3) and {1, 2} <= set(np.unique(out_labels))


def test_flip_flips_image_and_labels_and_photometric_distortion_leaves_labels():
    image, labels = gradient_image(16, 24), (np.arange(16 * 24) % 7).reshape(16, 24).astype(np.uint8)
    out, out_labels = apply(T.RandomFlip(prob=1.0, horizontal=True), image, labels)
    np.testing.assert_array_equal(out, image[:, ::-1])
    np.testing.assert_array_equal(out_labels, labels[:, ::-1])
    changed = 0
    for seed in range(8):
        np.random.seed(seed)
        out, out_labels = apply(PhotoMetricDistortion(), image, labels)
        np.testing.assert_array_equal(out_labels, labels)
        changed += not np.array_equal(out, image)
    assert changed >= 6  # each of the four steps has p = 0.5: all skipped with p = 1/16


def test_photometric_steps_are_mmsegs():
    image = gradient_image(8, 12)
    f = image.astype(np.float32)
    same = dict(brightness=None, contrast=None, contrast_first=True, saturation=None, hue=None)
    np.testing.assert_array_equal(photometric_distortion(image, **same), image)
    np.testing.assert_array_equal(photometric_distortion(image, **{**same, "brightness": -20.5}),
                                  np.clip(f - 20.5, 0, 255).astype(np.uint8))
    np.testing.assert_array_equal(photometric_distortion(image, **{**same, "contrast": 1.3}),
                                  np.clip(f * 1.3, 0, 255).astype(np.uint8))
    hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)
    hue = hsv.copy()
    hue[:, :, 0] = (hsv[:, :, 0].astype(int) - 18) % 180
    np.testing.assert_array_equal(photometric_distortion(image, **{**same, "hue": -18}),
                                  cv2.cvtColor(hue, cv2.COLOR_HSV2BGR))
    saturated = hsv.copy()
    saturated[:, :, 1] = np.clip(hsv[:, :, 1].astype(np.float32) * 0.6, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(photometric_distortion(image, **{**same, "saturation": 0.6}),
                                  cv2.cvtColor(saturated, cv2.COLOR_HSV2BGR))
    first = photometric_distortion(image, **{**same, "brightness": 40.0, "contrast": 1.5, "hue": 9})
    last = photometric_distortion(image, **{**same, "brightness": 40.0, "contrast": 1.5, "hue": 9,
                                            "contrast_first": False})
    assert not np.array_equal(first, last)  # mmseg's two modes: contrast before or after the HSV steps


def test_pad_to_size_pads_bottom_right_with_the_mean_and_255():
    image, labels = gradient_image(10, 12), np.ones((10, 12), np.uint8)
    out, out_labels = apply(PadToSize((16, 14), pad_value=(104, 116, 124)), image, labels)
    assert out.shape == (16, 14, 3) and out_labels.shape == (16, 14)
    np.testing.assert_array_equal(out[:10, :12], image)
    assert (out[10:] == [104, 116, 124]).all() and (out[:, 12:] == [104, 116, 124]).all()
    assert (out_labels[10:] == 255).all() and (out_labels[:, 12:] == 255).all() and (out_labels[:10, :12] == 1).all()


# --- checks before training -------------------------------------------------------------------------
def test_clean_datasets_pass_the_checks(synthetic):
    _, names = synthetic
    check_sem_seg_datasets(names["ade20k"], 150)
    check_sem_seg_datasets(names["coco_stuff10k"], 171)


@pytest.mark.parametrize("damage, message", [
    ("label_value", r"ADE_train_00000001.png holds values \[200\] outside the 150 classes"),
    ("size", r"ADE_train_00000001.png is 10x8 but its image .*ADE_train_00000001.jpg is \d+x96"),
    ("missing_label", r"image .*ADE_train_00000001.jpg has no label map in"),
    ("missing_image", r"label map .*ADE_train_00000001.png has no image in"),
    ("no_label_maps", r"(?s)image .*ADE_train_00000001.jpg has no label map in.*image .*ADE_train_00000002.jpg"),
    ("corrupt_png", r"label map .*ADE_train_00000001.png could not be read"),
    ("corrupt_jpeg", r"image .*ADE_train_00000001.jpg could not be read \(truncated"),
])
def test_bad_files_are_named_before_training(synthetic, tmp_path, damage, message):
    root, names = copy_registered(synthetic, tmp_path)
    label = os.path.join(root, "annotations_detectron2", "training", "ADE_train_00000001.png")
    image = os.path.join(root, "images", "training", "ADE_train_00000001.jpg")
    if damage == "label_value":
        labels = labels_of(label).copy()
        labels[0, 0] = 200
        write_png(label, labels)
    elif damage == "size":
        write_png(label, np.zeros((8, 10), np.uint8))
    elif damage in ("missing_label", "missing_image"):
        os.remove(label if damage == "missing_label" else image)
    elif damage == "no_label_maps":
        shutil.rmtree(os.path.dirname(label))
        os.makedirs(os.path.dirname(label))
    else:
        path = label if damage == "corrupt_png" else image
        with open(path, "rb") as f:
            data = f.read()
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2])
    with pytest.raises(ValueError, match=message):
        check_sem_seg_datasets(names[0], 150)


def test_files_missing_from_an_image_list_are_named(synthetic, tmp_path):
    root, names = copy_registered(synthetic, tmp_path, "coco_stuff10k")
    os.remove(os.path.join(root, "images", "COCO_val2014_000000000002.jpg"))
    os.remove(os.path.join(root, "annotations_detectron2", "test", "COCO_val2014_000000000001.png"))
    with pytest.raises(ValueError, match=r"(?s)label map .*test/COCO_val2014_000000000001.png does not exist.*"
                                         r"image .*COCO_val2014_000000000002.jpg does not exist"):
        check_sem_seg_datasets(names[1], 171)


def test_wrong_class_count_and_unknown_names_are_refused(synthetic):
    _, names = synthetic
    with pytest.raises(ValueError, match=r"has 150 classes but the config's model.num_classes=171: set "
                                         r"model.num_classes=150"):
        check_sem_seg_datasets(names["ade20k"][0], 171, "model.num_classes")
    with pytest.raises(KeyError, match="'no_such_set' is not registered"):
        check_sem_seg_datasets("no_such_set", 150)
    missing = register_sem_seg_dataset("nowhere", "/nonexistent/ADEChallengeData2016", "ade20k")
    with pytest.raises(FileNotFoundError, match="run datasets/prepare_ade20k.py"):
        check_sem_seg_datasets(missing[0], 150)


# --- loaders -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("config, train, test", [("ade20k", "ade20k_sem_seg_train", "ade20k_sem_seg_val"),
                                                 ("coco_stuff10k", "coco_stuff_10k_sem_seg_train",
                                                  "coco_stuff_10k_sem_seg_test")])
def test_dataset_loader_configs_hold_mmsegs_recipe(config, train, test):
    cfg = LazyConfig.load(os.path.join(LOADER_CONFIGS, f"{config}_loader.py")).dataloader
    assert (cfg.train.dataset.names, cfg.test.dataset.names, cfg.train.total_batch_size) == (train, test, 16)
    resize, crop, flip, photometric, pad = instantiate(cfg.train.mapper).augmentations.augs
    assert (resize.scale, resize.ratio_range) == ([2048, 512], [0.5, 2.0])
    assert (crop.crop_size, crop.cat_max_ratio, crop.ignore_label) == ([512, 512], 0.75, 255)
    assert (flip.prob, flip.horizontal) == (0.5, True) and isinstance(photometric, PhotoMetricDistortion)
    assert (photometric.brightness_delta, photometric.hue_delta) == (32, 18)
    assert (pad.size, pad.seg_pad_value) == ([512, 512], 255)
    (test_resize,) = instantiate(cfg.test.mapper).augmentations.augs
    assert (test_resize.scale, test_resize.ratio_range) == ([2048, 512], None)


def test_synthetic_loader_config_resumes_with_the_same_batches(synthetic):
    _, names = synthetic
    cfg = LazyConfig.load(os.path.join(LOADER_CONFIGS, "synthetic_loader.py"))
    cfg.dataloader.train.dataset.names = names["ade20k"][0]
    cfg.dataloader.train.total_batch_size = 2
    assert cfg.dataloader.train._target_ is build_resumable_train_loader

    def batches(start_iter, count):
        cfg.dataloader.train.update(seed=5, start_iter=start_iter)
        return [[(d["file_name"], d["image"], d["sem_seg"]) for d in batch]
                for batch in itertools.islice(instantiate(cfg.dataloader.train), count)]

    uninterrupted = batches(0, 5)
    assert all(d[1].shape == (3, 64, 64) and d[2].shape == (64, 64) for batch in uninterrupted for d in batch)
    resumed = batches(3, 2)
    assert all(x[0] == y[0] and torch.equal(x[1], y[1]) and torch.equal(x[2], y[2])
               for p, q in zip(resumed, uninterrupted[3:]) for x, y in zip(p, q))


# --- metrics ---------------------------------------------------------------------------------------
def direct_metrics(pairs, num_classes):
    """mIoU, mAcc, aAcc (percent) of saved ``(prediction .npy, label .png)`` files: a confusion matrix over the
    labelled pixels, means over the classes present in the labels."""
    confusion = np.zeros((num_classes, num_classes), np.int64)  # [label, prediction]
    for prediction_file, label_file in pairs:
        prediction, label = np.load(prediction_file), labels_of(label_file).astype(np.int64)
        keep = label != 255
        np.add.at(confusion, (label[keep], prediction[keep]), 1)
    tp, labelled, predicted = np.diag(confusion), confusion.sum(1), confusion.sum(0)
    present = labelled > 0
    iou = tp[present] / (labelled + predicted - tp)[present]
    return {"mIoU": 100 * iou.mean(), "mAcc": 100 * (tp[present] / labelled[present]).mean(),
            "aAcc": 100 * tp.sum() / labelled.sum()}


def test_metrics_equal_a_direct_computation_from_saved_predictions(synthetic, tmp_path):
    _, names = synthetic
    name = names["ade20k"][1]
    evaluator = SemSegMetrics(name, distributed=False)
    evaluator.reset()
    rng = np.random.default_rng(0)
    pairs = []
    for i, item in enumerate(DatasetCatalog.get(name) + DatasetCatalog.get(names["ade20k"][0])[:1]):
        label = labels_of(item["sem_seg_file_name"]).astype(np.int64)
        prediction = np.where(rng.random(label.shape) < 0.7, np.where(label == 255, 0, label),
                              rng.integers(0, 150, label.shape))  # 70 % right, the rest anywhere (also class 149)
        path = str(tmp_path / f"prediction_{i}.npy")
        np.save(path, prediction)
        pairs.append((path, item["sem_seg_file_name"]))
    evaluator.input_file_to_gt_file.update({p: g for p, g in pairs})  # the last pair is a training image
    for prediction_file, label_file in pairs:
        prediction = torch.from_numpy(np.load(prediction_file))
        scores = torch.nn.functional.one_hot(prediction, 150).permute(2, 0, 1).float()
        evaluator.process([{"file_name": prediction_file}], [{"sem_seg": scores}])
    results = evaluator.evaluate()["sem_seg"]
    expected = direct_metrics(pairs, 150)
    for key in ("mIoU", "mAcc", "aAcc"):
        assert results[key] == pytest.approx(expected[key], rel=1e-12)
    ade_ids = sorted({c.ade20k_id - 1 for c in SYNTHETIC_CLASSES})
    class_names = MetadataCatalog.get(name).stuff_classes
    assert np.isnan(results[f"IoU-{class_names[149]}"])  # predicted, never labelled: left out (mmseg: IoU 0)
    assert np.nanmean([results[f"IoU-{class_names[k]}"] for k in ade_ids]) == pytest.approx(results["mIoU"])
