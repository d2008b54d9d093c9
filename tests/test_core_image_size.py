"""Input images of the demos are bounded from their header, before decoding (``snnet_core.io.image_size``)."""
import struct
import warnings
import zlib

import pytest
from PIL import Image

from snnet_core.io.image_size import MAX_IMAGE_PIXELS, ImageTooLargeError, check_image_pixels, header_size


def png_header(path, width, height):
    """A PNG of ``width x height`` RGB pixels that holds only its header (IHDR, IEND): a few bytes on disk, which
    ``Image.open`` reads as that size; decoding it fails (no pixel data)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IEND", b""))
    return str(path)


def test_the_size_comes_from_the_header_and_too_many_pixels_are_refused_naming_the_limit(tmp_path):
    assert header_size(png_header(tmp_path / "photo.png", 4000, 3000)) == (3000, 4000)
    assert check_image_pixels(str(tmp_path / "photo.png")) == (3000, 4000)
    big = png_header(tmp_path / "big.png", 8000, 8000)
    with pytest.raises(ImageTooLargeError, match=r"image '.*big.png' is 8000x8000 pixels \(width x height, 64 MP\), "
                                                 r"more than the demos' limit of 50 MP .*refused before decoding it.* "
                                                 r"downscale it \(e\.g\. to at most 7071x7071\) or leave it out"):
        check_image_pixels(big)
    assert MAX_IMAGE_PIXELS == 50_000_000


def test_pils_decompression_bomb_error_and_warning_become_the_same_refusal(tmp_path):
    bomb = png_header(tmp_path / "bomb.png", 60000, 60000)  # 3.6 GP: PIL raises DecompressionBombError on open
    with pytest.raises(ImageTooLargeError, match=r"image '.*bomb.png' is larger than PIL's decompression-bomb limit "
                                                 r"\(.*\), more than the demos' limit of 50 MP"):
        check_image_pixels(bomb)
    warned = png_header(tmp_path / "warned.png", 10000, 10000)  # 100 MP: PIL warns on open
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(ImageTooLargeError, match=r"'.*warned.png' is 10000x10000 pixels"):
            check_image_pixels(warned)


def test_a_file_pil_cannot_read_is_checked_by_its_decoded_size(tmp_path):
    odd = tmp_path / "odd.png"
    odd.write_bytes(b"not an image")
    assert check_image_pixels(str(odd)) is None
    with pytest.raises(ImageTooLargeError, match=r"'.*odd.png' is 9000x6000 pixels"):
        check_image_pixels(str(odd), (6000, 9000))
