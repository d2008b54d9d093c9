"""Test images holding NaN/inf: left out of an evaluation and named in one warning (``snnet_core.evaluation.finite_inputs``)."""
import logging

import torch

from snnet_core.evaluation.finite_inputs import NonFiniteImages


def test_keep_drops_and_records_non_finite_images_of_a_batch_or_a_list():
    record = NonFiniteImages()
    batch = torch.zeros(4, 3, 2, 2)
    batch[1, 0, 0, 0], batch[3, 2, 1, 1] = float("nan"), float("inf")
    assert record.keep(batch, lambda i: f"b{i}") == [0, 2]
    uint8 = torch.zeros(3, 2, 2, dtype=torch.uint8)  # cannot hold NaN: never looked at
    assert record.keep([uint8, batch[1], batch[0]], lambda i: f"l{i}") == [0, 2]
    assert record.keep(batch, lambda i: f"b{i}") == [0, 2]  # a second pass over the same images
    assert list(record.names) == ["b1", "b3", "l1"]


def test_warn_names_the_count_and_the_first_five_once(caplog):
    record, log = NonFiniteImages(), logging.getLogger("test_finite_inputs")
    record.warn(log, "none")  # nothing recorded: nothing said
    record.keep(torch.full((7, 3), float("nan")), lambda i: f"img{i}.png")
    with caplog.at_level(logging.WARNING, logger="test_finite_inputs"):
        record.warn(log, "Metrics are over the others")
        record.warn(log, "Metrics are over the others")
    assert [r.getMessage() for r in caplog.records] == [
        "7 test image(s) hold NaN or inf values and are left out of the evaluation: img0.png, img1.png, img2.png, "
        "img3.png, img4.png, ... (7 in all). Metrics are over the others. They come from a float image file or a "
        "corrupt decode: repair or remove them"]
