"""NYUv2 depth readers for the two layouts in use, returning raw frames ``(image, depth)``.

* ``NYUv2Labeled``: the official labeled file ``nyu_depth_v2_labeled.mat`` (MATLAB v7.3, i.e. HDF5) with
  ``splits.mat`` (``trainNdxs`` 795 / ``testNdxs`` 654, 1-based). The HDF5 file is read lazily, one frame
  per ``read`` call (never the 2.8 GB file whole), and opened once per process (DataLoader workers
  included). h5py sees MATLAB's column-major arrays with reversed axes: ``images`` ``(N, 3, W, H)`` uint8
  and ``rawDepths`` / ``depths`` ``(N, W, H)`` float metres; frames come out as ``H x W`` = 480 x 640.
  The ground truth is chosen by ``depth_source``: ``"raw"`` (default) reads ``rawDepths``, the Kinect depth
  projected onto the RGB image before in-painting (0 = no measurement). It is what BTS's extraction of the
  official test split (the toolboxes' 654-frame NYUv2 test set) stores, so it is the standard protocol.
  ``"filled"`` reads the in-painted ``depths`` (dense, no holes).
* ``NYUv2Sync``: the "sync" layout of BTS and the depth toolboxes: a list file whose lines are
  ``rgb_path depth_path focal`` (paths relative to an image root, leading ``/`` allowed), RGB JPEG/PNG and
  depth PNG uint16 in millimetres.

Both give ``image`` ``(H, W, 3)`` uint8 RGB and ``depth`` ``(H, W)`` float32 metres (0 = no measurement).
Input that would train or evaluate silently wrong is refused with the file and the fix: float images in the
``.mat`` (``images`` must be uint8), non-finite depth (checked on every frame read), depth in another unit or
empty (``check_depth_values``, on a sample of each split) and overlapping train/test splits (``shared_frames``).
"""
from __future__ import annotations

import logging
import os
from typing import List, Optional, Tuple, Union

import cv2
import numpy as np

logger = logging.getLogger(__name__)

LABELED_MAT = "nyu_depth_v2_labeled.mat"
SPLITS_MAT = "splits.mat"
SPLIT_KEYS = {"train": "trainNdxs", "test": "testNdxs"}
SYNC_TRAIN_ROOT = "sync"
SYNC_TEST_ROOT = os.path.join("official_splits", "test")
SYNC_TRAIN_LIST = "nyudepthv2_train_files_with_gt.txt"
SYNC_TEST_LIST = "nyudepthv2_test_files_with_gt.txt"
SYNC_DEPTH_SCALE = 1000.0  # uint16 millimetres -> metres
# depth_source -> dataset of the labeled .mat holding that ground truth
DEPTH_SOURCES = {"raw": "rawDepths", "filled": "depths"}
MIN_MEDIAN_DEPTH = 0.1  # metres: no NYUv2 room has half its pixels closer (Kinect range 0.5-10 m)
DEPTH_CHECK_FRAMES = 8  # frames per split read by check_depth_values

Frame = Tuple[np.ndarray, np.ndarray]


def _require_file(path: str, what: str) -> None:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} {path!r} does not exist (see datasets/prepare_nyu.md)")


def depth_key(depth_source: str) -> str:
    """The labeled ``.mat`` dataset read for ``depth_source`` (``"raw"`` -> ``rawDepths``, ``"filled"`` ->
    ``depths``)."""
    if depth_source not in DEPTH_SOURCES:
        raise ValueError(f"depth_source must be one of {sorted(DEPTH_SOURCES)}, got {depth_source!r}")
    return DEPTH_SOURCES[depth_source]


def _other_source_hint(depth_source: str, missing: List[str]) -> str:
    """How to read the other ground truth when the one of ``depth_source`` is among the ``missing`` keys."""
    if DEPTH_SOURCES[depth_source] not in missing:
        return ""
    other = next(s for s in DEPTH_SOURCES if s != depth_source)
    return (f"; depth_source={depth_source!r} reads {DEPTH_SOURCES[depth_source]!r}, set depth_source={other!r} "
            f"to read {DEPTH_SOURCES[other]!r} instead")


def read_split_indices(splits_path: str, split: str, num_frames: int) -> np.ndarray:
    """0-based frame indices of ``split`` from ``splits.mat`` (1-based MATLAB indices), validated."""
    import scipy.io

    if split not in SPLIT_KEYS:
        raise ValueError(f"split must be one of {sorted(SPLIT_KEYS)}, got {split!r}")
    _require_file(splits_path, "NYUv2 splits file")
    try:
        splits = scipy.io.loadmat(splits_path)
    except Exception as exc:
        raise ValueError(f"could not read {splits_path!r} as a MATLAB file ({type(exc).__name__}: {exc})") from exc
    key = SPLIT_KEYS[split]
    if key not in splits:
        found = sorted(k for k in splits if not k.startswith("__"))
        raise ValueError(f"{splits_path!r} has no {key!r} (found {found}); expected the official NYUv2 splits.mat "
                         f"with {sorted(SPLIT_KEYS.values())}")
    raw = np.asarray(splits[key]).reshape(-1)
    indices = raw.astype(np.int64)
    if not np.array_equal(indices, raw) or len(indices) == 0:
        raise ValueError(f"{splits_path!r}: {key!r} must hold positive integer frame numbers")
    bad = indices[(indices < 1) | (indices > num_frames)]
    if len(bad):
        raise IndexError(f"{splits_path!r}: {key!r} holds frame number {int(bad[0])} ({len(bad)} out of range); "
                         f"the labeled file has {num_frames} frames, numbered 1..{num_frames} (1-based)")
    return indices - 1


class NYUv2Labeled:
    """Frames of one split of the official labeled ``.mat`` (read lazily with h5py).

    Args:
        mat_path: ``nyu_depth_v2_labeled.mat`` (MATLAB v7.3).
        splits_path: ``splits.mat`` with ``trainNdxs`` / ``testNdxs``.
        split: ``"train"`` or ``"test"``.
        depth_source: ``"raw"`` (``rawDepths``, holes = 0; the standard protocol, for both splits: the
            reference recipe trains on raw sync depths too) or ``"filled"`` (the in-painted ``depths``).
    """

    def __init__(self, mat_path: str, splits_path: str, split: str, depth_source: str = "raw"):
        import h5py

        self.depth_key = depth_key(depth_source)
        _require_file(mat_path, "NYUv2 labeled file")
        self.mat_path = mat_path
        try:
            with h5py.File(mat_path, "r") as f:
                missing = [k for k in ("images", self.depth_key) if k not in f]
                if missing:
                    raise ValueError(
                        f"{mat_path!r} has no {missing} dataset (found {sorted(f.keys())}); expected the official "
                        f"{LABELED_MAT} with 'images' (N, 3, 640, 480) uint8 and {self.depth_key!r} (N, 640, 480)"
                        + _other_source_hint(depth_source, missing))
                images, depths = f["images"].shape, f[self.depth_key].shape
                image_dtype = f["images"].dtype
        except OSError as exc:
            raise ValueError(f"{mat_path!r} is not a MATLAB v7.3 (HDF5) file ({exc}); the official "
                             f"{LABELED_MAT} is v7.3") from exc
        if len(images) != 4 or images[1] != 3 or len(depths) != 3 or images[0] != depths[0] or images[2:] != depths[1:]:
            raise ValueError(f"{mat_path!r}: 'images' {images} and {self.depth_key!r} {depths} do not have the "
                             "layout (N, 3, W, H) and (N, W, H) of the official file")
        if image_dtype != np.uint8:
            raise ValueError(f"{mat_path!r}: 'images' is {image_dtype}, expected uint8 (0-255) as in the official "
                             f"{LABELED_MAT}; the model would see a float image in [0, 1] as almost black. Convert "
                             "it, e.g. np.round(images * 255).astype(np.uint8)")
        self.num_frames = int(images[0])
        self.size = (int(images[3]), int(images[2]))  # (H, W)
        self.indices = read_split_indices(splits_path, split, self.num_frames)
        self.source = (f"{os.path.abspath(mat_path)} ({self.depth_key}, {SPLIT_KEYS[split]} of "
                       f"{os.path.abspath(splits_path)})")
        self._file = None
        logger.info("%s: %d %s frames, ground truth from %r", mat_path, len(self.indices), split, self.depth_key)

    def __len__(self) -> int:
        return len(self.indices)

    def frame_keys(self) -> List[str]:
        """One key per frame that names it across splits (the labeled file and the frame number)."""
        path = os.path.realpath(self.mat_path)
        return [f"{path}:{int(j) + 1}" for j in self.indices]

    def _h5(self):
        if self._file is None:  # opened on first use in each process
            import h5py

            self._file = h5py.File(self.mat_path, "r")
        return self._file

    def __getstate__(self):  # an open h5py handle cannot go to DataLoader workers
        return dict(self.__dict__, _file=None)

    def read(self, i: int) -> Frame:
        """Frame ``i`` of the split: ``image`` ``(H, W, 3)`` uint8 RGB, ``depth`` ``(H, W)`` float32 metres."""
        f = self._h5()
        j = int(self.indices[i])
        image = np.ascontiguousarray(f["images"][j].transpose(2, 1, 0))  # (3, W, H) -> (H, W, 3)
        depth = np.ascontiguousarray(f[self.depth_key][j].T, dtype=np.float32)  # (W, H) -> (H, W)
        bad = int(np.size(depth) - np.isfinite(depth).sum())
        if bad:
            raise ValueError(f"{self.mat_path!r}: frame {j + 1} (1-based) of {self.depth_key!r} holds {bad} non-finite "
                             "values (inf/NaN); depth must be finite metres with 0 where unknown. Repair the file "
                             "(e.g. set those pixels to 0)")
        return image, depth


class NYUv2Sync:
    """Frames listed in a sync-layout split file (``rgb_path depth_path focal`` per line)."""

    def __init__(self, image_root: str, list_file: str):
        _require_file(list_file, "NYUv2 split file")
        if not os.path.isdir(image_root):
            raise FileNotFoundError(f"NYUv2 image folder {image_root!r} does not exist (see datasets/prepare_nyu.md)")
        self.image_root, self.list_file = image_root, list_file
        self.source = os.path.abspath(list_file)
        self.entries: List[str] = []  # rgb paths as listed (no leading /): a frame's name across splits
        self.items: List[Tuple[str, str]] = []
        skipped = 0
        with open(list_file) as f:
            for line_no, line in enumerate(f, 1):
                fields = line.split()
                if not fields:
                    continue
                if len(fields) != 3:
                    raise ValueError(
                        f"{list_file}:{line_no}: expected 'rgb_path depth_path focal', got {line.strip()!r}")
                if fields[1] == "None":  # frames without ground truth in some published lists
                    skipped += 1
                    continue
                self.entries.append(fields[0].lstrip("/"))
                self.items.append(tuple(os.path.join(image_root, p.lstrip("/")) for p in fields[:2]))
        if not self.items:
            raise ValueError(f"{list_file!r} lists no frame with ground truth")
        if skipped:
            logger.info("%s: skipped %d frames without ground truth", list_file, skipped)
        missing = [p for item in self.items for p in item if not os.path.isfile(p)]
        if missing:
            raise FileNotFoundError(f"{len(missing)} files listed in {list_file!r} are missing under {image_root!r}, "
                                    f"e.g. {missing[0]!r}")

    def __len__(self) -> int:
        return len(self.items)

    def frame_keys(self) -> List[str]:
        """One key per frame that names it across splits (its rgb path as the list gives it)."""
        return list(self.entries)

    def read(self, i: int) -> Frame:
        rgb_path, depth_path = self.items[i]
        bgr = cv2.imread(rgb_path, cv2.IMREAD_COLOR)
        depth = cv2.imread(depth_path, cv2.IMREAD_UNCHANGED)
        if bgr is None or depth is None:
            bad = rgb_path if bgr is None else depth_path
            problem = "is missing" if not os.path.isfile(bad) else "is not a decodable image (truncated or corrupt?)"
            raise OSError(f"{bad!r} {problem}; it is listed in {self.list_file!r}: restore the file or remove its line "
                          "from the list")
        if depth.dtype != np.uint16 or depth.ndim != 2:
            raise ValueError(f"{depth_path!r} must be a single-channel uint16 PNG in millimetres, "
                             f"got {depth.dtype} with shape {depth.shape}")
        if depth.shape != bgr.shape[:2]:
            raise ValueError(f"{rgb_path!r} is {bgr.shape[:2]} but its depth {depth_path!r} is {depth.shape}")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), depth.astype(np.float32) / SYNC_DEPTH_SCALE


def check_depth_values(frames: Union[NYUv2Labeled, NYUv2Sync], max_depth: float,
                       num_frames: int = DEPTH_CHECK_FRAMES) -> None:
    """Refuse ground truth in another unit than metres, or without any measurement, judged on ``num_frames``
    frames spread over the split: depth in millimetres (median far above ``max_depth``), metres written where
    millimetres belong (median below 0.1 m) and an all-zero depth would otherwise train the whole schedule and
    fail (or mislead) only at evaluation."""
    picked = sorted({int(round(i)) for i in np.linspace(0, len(frames) - 1, min(num_frames, len(frames)))})
    valid = np.concatenate([depth[depth > 0] for depth in (frames.read(i)[1] for i in picked)])
    where = f"{frames.source}, frames {[i + 1 for i in picked]} of the split"
    if valid.size == 0:
        raise ValueError(f"{where}: the depth is 0 (no measurement) everywhere; nothing could be trained or "
                         "evaluated. Check that the depth files hold the ground truth (datasets/prepare_nyu.md)")
    median = float(np.median(valid))
    if median > max_depth:
        raise ValueError(f"{where}: median depth {median:.4g} is above model.max_depth={max_depth} m; the depth "
                         "looks like millimetres: the labeled .mat holds metres (divide by 1000)")
    if median < MIN_MEDIAN_DEPTH:
        raise ValueError(f"{where}: median depth {median:.4g} m is below {MIN_MEDIAN_DEPTH} m; the depth looks "
                         "like metres written where millimetres belong (sync depth PNGs are uint16 millimetres)")


def shared_frames(train: Union[NYUv2Labeled, NYUv2Sync], test: Union[NYUv2Labeled, NYUv2Sync]) -> List[str]:
    """Keys of the frames that are in both splits (empty for disjoint splits)."""
    return sorted(set(train.frame_keys()) & set(test.frame_keys()))


def build_nyu_split(layout: str, data_root: str, split: str, list_file: Optional[str] = None,
                    depth_source: str = "raw") -> Union[NYUv2Labeled, NYUv2Sync]:
    """Reader of ``split`` (``train``/``test``) in ``layout`` (``mat``/``sync``) under ``data_root``.

    ``mat``: ``data_root/nyu_depth_v2_labeled.mat`` and ``data_root/splits.mat``; ``depth_source`` picks the
    ground truth (``"raw"``: ``rawDepths``, the standard protocol; ``"filled"``: the in-painted ``depths``).
    ``sync``: images under ``data_root/sync`` (train) or ``data_root/official_splits/test`` (test), listed by
    ``list_file`` (default ``data_root/nyudepthv2_{train,test}_files_with_gt.txt``, the BTS names); its depth
    PNGs are raw, so only ``depth_source="raw"`` is accepted.
    """
    if split not in SPLIT_KEYS:
        raise ValueError(f"split must be one of {sorted(SPLIT_KEYS)}, got {split!r}")
    depth_key(depth_source)  # validates depth_source for both layouts
    if layout == "mat":
        return NYUv2Labeled(os.path.join(data_root, LABELED_MAT), os.path.join(data_root, SPLITS_MAT), split,
                            depth_source)
    if layout == "sync":
        if depth_source != "raw":
            raise ValueError(f"depth_source={depth_source!r} needs layout 'mat': the sync layout's depth PNGs hold "
                             "raw (not in-painted) depth only; use depth_source='raw' with layout 'sync'")
        root = os.path.join(data_root, SYNC_TRAIN_ROOT if split == "train" else SYNC_TEST_ROOT)
        default_list = SYNC_TRAIN_LIST if split == "train" else SYNC_TEST_LIST
        return NYUv2Sync(root, list_file or os.path.join(data_root, default_list))
    raise ValueError(f"dataset layout must be 'mat' or 'sync', got {layout!r}")
