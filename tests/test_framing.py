"""Specification of fit_frame: exact output size, never stretched, centre kept, mirror flips."""
from __future__ import annotations

import numpy as np
import pytest

from vcam.framing import fit_frame
from vcam.overlay import draw_status

pytestmark = pytest.mark.timeout(60)

# (source w, h) -> (target w, h): camera -> model, model -> virtual camera, odd and extreme shapes.
SIZE_PAIRS = [((1280, 720), (256, 256)), ((256, 256), (1280, 720)), ((640, 480), (1280, 720)),
              ((720, 1280), (256, 256)), ((97, 61), (64, 64)), ((64, 64), (33, 17)), ((1, 200), (50, 50)),
              ((300, 2), (40, 30)), ((128, 128), (128, 128))]


def random_size_pairs(count: int, seed: int = 7) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    rng = np.random.default_rng(seed)
    return [((int(rng.integers(1, 400)), int(rng.integers(1, 400))),
             (int(rng.integers(1, 300)), int(rng.integers(1, 300)))) for _ in range(count)]


ALL_PAIRS = SIZE_PAIRS + random_size_pairs(40)


@pytest.mark.parametrize("mode", ["crop", "letterbox"])
def test_output_shape_is_always_exactly_the_target(mode):
    for (src_w, src_h), (dst_w, dst_h) in ALL_PAIRS:
        frame = np.full((src_h, src_w, 3), 100, dtype=np.uint8)
        out = fit_frame(frame, dst_w, dst_h, mode)
        assert out.shape == (dst_h, dst_w, 3) and out.dtype == np.uint8
        assert out.flags.c_contiguous


def test_letterbox_keeps_the_whole_frame_at_its_aspect_within_one_pixel():
    for (src_w, src_h), (dst_w, dst_h) in ALL_PAIRS:
        out = fit_frame(np.full((src_h, src_w, 3), 255, dtype=np.uint8), dst_w, dst_h, "letterbox")
        rows = np.flatnonzero(out[..., 0].any(axis=1))
        cols = np.flatnonzero(out[..., 0].any(axis=0))
        content_w, content_h = cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1
        assert content_w == dst_w or content_h == dst_h, "the content touches two opposite edges"
        # aspect preserved: the rounding of one side is the only error
        assert abs(content_w - content_h * src_w / src_h) <= 1 or abs(content_h - content_w * src_h / src_w) <= 1
        # centred: the bars on both sides differ by at most one pixel
        assert abs(cols[0] - (dst_w - 1 - cols[-1])) <= 1 and abs(rows[0] - (dst_h - 1 - rows[-1])) <= 1


def test_letterbox_bars_are_black():
    out = fit_frame(np.full((720, 1280, 3), 200, dtype=np.uint8), 256, 256, "letterbox")
    assert out[0].max() == 0 and out[-1].max() == 0
    assert (out[128] == 200).all()


def centred_square_frame(width: int, height: int) -> np.ndarray:
    """Black frame with a white square in the middle, side a third of the short side."""
    frame = np.zeros((height, width, 3), dtype=np.uint8)
    side = min(width, height) // 3
    top, left = (height - side) // 2, (width - side) // 2
    frame[top : top + side, left : left + side] = 255
    return frame


@pytest.mark.parametrize("mode", ["crop", "letterbox"])
@pytest.mark.parametrize("src,dst", [((1280, 720), (256, 256)), ((256, 256), (1280, 720)),
                                     ((480, 640), (320, 180)), ((300, 300), (90, 160))])
def test_content_is_never_stretched_and_stays_centred(mode, src, dst):
    out = fit_frame(centred_square_frame(*src), dst[0], dst[1], mode)
    mask = out[..., 0] >= 128
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    square_w, square_h = cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1
    assert abs(square_w - square_h) <= 2, "a square must stay a square (resampling may blur one pixel per edge)"
    # centred within one pixel, plus half a source pixel when enlarging (odd leftovers cannot split evenly)
    pick = max if mode == "crop" else min
    tolerance = 1 + 0.5 * max(1.0, pick(dst[0] / src[0], dst[1] / src[1]))
    assert abs((cols[0] + cols[-1]) / 2 - (dst[0] - 1) / 2) <= tolerance
    assert abs((rows[0] + rows[-1]) / 2 - (dst[1] - 1) / 2) <= tolerance


def test_crop_fills_the_target_and_cuts_the_overhang_from_both_sides():
    frame = np.zeros((100, 300, 3), dtype=np.uint8)
    frame[:, :100] = (255, 0, 0)   # left third red
    frame[:, 100:200] = (0, 255, 0)  # middle third green
    frame[:, 200:] = (0, 0, 255)   # right third blue
    out = fit_frame(frame, 50, 50, "crop")
    assert (out[..., 1] > 200).all(), "a square crop of a 3:1 frame is exactly its middle third"


def test_mirror_flips_left_and_right():
    frame = np.zeros((48, 64, 3), dtype=np.uint8)
    frame[:, :8] = 255  # a bar on the left edge
    for mode in ("crop", "letterbox"):
        plain = fit_frame(frame, 64, 48, mode)
        mirrored = fit_frame(frame, 64, 48, mode, mirror=True)
        assert np.array_equal(mirrored, plain[:, ::-1])
        assert mirrored[:, -1].min() == 255 and mirrored[:, 0].max() == 0


def test_same_size_without_mirror_returns_the_frame_unchanged():
    frame = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    assert np.array_equal(fit_frame(frame, 64, 48, "crop"), frame)
    assert np.array_equal(fit_frame(frame, 64, 48, "letterbox"), frame)


@pytest.mark.parametrize("bad", [np.zeros((10, 10), np.uint8), np.zeros((10, 10, 4), np.uint8),
                                 np.zeros((10, 10, 3), np.float32)])
def test_wrong_frame_layout_is_refused_with_the_expected_layout(bad):
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        fit_frame(bad, 8, 8)


def test_unknown_mode_and_empty_target_are_refused():
    frame = np.zeros((10, 10, 3), np.uint8)
    with pytest.raises(ValueError, match="crop' or 'letterbox"):
        fit_frame(frame, 8, 8, "stretch")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive"):
        fit_frame(frame, 0, 8)


def test_status_overlay_writes_text_on_a_copy_and_leaves_the_rest_alone():
    frame = np.full((128, 128, 3), 255, dtype=np.uint8)
    out = draw_status(frame, ["12.0 fps", "skip 30%"])
    assert (frame == 255).all(), "the caller's frame is untouched"
    assert out.shape == frame.shape and out.dtype == np.uint8
    assert out[:20, :40].mean() < 200, "the text box darkens the top-left corner"
    assert (out[96:, 96:] == 255).all(), "far from the text nothing changes"
    assert np.array_equal(draw_status(frame, []), frame)


def test_status_text_shrinks_to_fit_a_narrow_output_instead_of_running_off_its_edge():
    portrait = np.full((1280, 360, 3), 255, dtype=np.uint8)  # a phone-shaped output: text sized by height is wide
    out = draw_status(portrait, ["camera lost - reconnecting..."])
    assert out[:40].mean() < 200, "the notice is drawn"
    assert (out[:, -2:] == 255).all(), "and ends inside the frame: its box never reaches the right edge"


def test_large_shrink_averages_fine_detail_instead_of_aliasing():
    stripes = np.zeros((720, 1280, 3), dtype=np.uint8)
    stripes[:, ::2] = 255  # one-pixel stripes: the worst case for a sampling (non-averaging) resize
    out = fit_frame(stripes, 256, 256, "crop").astype(int)
    assert abs(out.mean() - 127.5) < 2 and out.std() < 4, "averaged to an even grey, no moire bands"


def test_camera_to_model_size_is_cheap():
    import time

    frame = np.random.default_rng(1).integers(0, 256, (720, 1280, 3), dtype=np.uint8)
    fit_frame(frame, 256, 256)
    start = time.process_time()  # CPU time: not inflated when other work shares the machine
    for _ in range(20):
        fit_frame(frame, 256, 256)
    assert (time.process_time() - start) / 20 < 0.008, "a small part of a 30 fps frame period"
