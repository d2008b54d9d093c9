"""The prediction scripts' inputs and outputs (``snnet_core.io.images``): image lists, and output names that never
replace an input, never collide within a run and never replace an earlier run's outputs unasked."""
import logging
import os

import pytest

from snnet_core.io.images import list_images, output_paths


def touch(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(b"image")
    return str(path)


def test_images_of_one_name_get_numbered_outputs_and_a_log_line(tmp_path, caplog):
    images = [touch(tmp_path / "a" / "x.jpg"), touch(tmp_path / "b" / "x.jpg"), touch(tmp_path / "b" / "X.png"),
              touch(tmp_path / "c" / "x_2.jpg")]
    out = str(tmp_path / "out")
    with caplog.at_level(logging.WARNING, logger="snnet_core.io.images"):
        paths = output_paths(images, out, ("_depth.png", "_depth.npy"))
    names = [[os.path.relpath(p, out) for p in outputs] for outputs in paths]
    # the second x keeps clear of c/x_2.jpg's own name; X.png collides with x on a case-insensitive disk
    assert names == [["x_depth.png", "x_depth.npy"], ["x_3_depth.png", "x_3_depth.npy"],
                     ["X_4_depth.png", "X_4_depth.npy"], ["x_2_depth.png", "x_2_depth.npy"]]
    assert len({p for outputs in paths for p in outputs}) == 8
    assert f"{images[1]} has the name of {images[0]}: its output is named x_3_depth.png" in caplog.text
    assert f"{images[2]} has the name of {images[0]}: its output is named X_4_depth.png" in caplog.text


def test_an_output_that_would_replace_an_input_image_is_refused_naming_both(tmp_path):
    folder = tmp_path / "photos"
    photo, drawing = touch(folder / "photo.png"), touch(folder / "photo_depth.png")
    with pytest.raises(ValueError, match=rf"the output {photo} of {photo} would replace the input image {photo}: "
                                         "give --output another folder"):
        output_paths([photo], str(folder), (".png",))
    with pytest.raises(ValueError, match=rf"output {drawing} of {photo} would replace the input image {drawing}"):
        output_paths([photo, drawing], str(folder), ("_depth.png",), overwrite=True)  # --overwrite: never an input
    assert os.path.getsize(photo) == os.path.getsize(drawing) == 5


def test_outputs_of_an_earlier_run_are_refused_unless_overwrite(tmp_path):
    image = touch(tmp_path / "in" / "x.jpg")
    out = tmp_path / "out"
    earlier = touch(out / "x_depth.npy")
    with pytest.raises(FileExistsError, match=rf"--output {out} already holds {earlier}, written before: pass "
                                              "--overwrite to replace them"):
        output_paths([image], str(out), ("_depth.png", "_depth.npy"))
    assert output_paths([image], str(out), ("_depth.png", "_depth.npy"), overwrite=True) == [
        [str(out / "x_depth.png"), earlier]]
    os.makedirs(out / "y.png")
    with pytest.raises(NotADirectoryError, match=r"y.png is a directory, not a file"):
        output_paths([touch(tmp_path / "in" / "y.jpg")], str(out), (".png",), overwrite=True)
    with pytest.raises(NotADirectoryError, match=rf"{image} is a file, not a directory"):
        output_paths([image], os.path.join(image, "sub"), (".png",))


def test_an_image_named_twice_is_listed_once(tmp_path):
    a, b = touch(tmp_path / "d" / "a.jpg"), touch(tmp_path / "d" / "b.png")
    assert list_images([a, str(tmp_path / "d"), os.path.join(str(tmp_path), ".", "d", "b.png")]) == [a, b]
