"""Region shapes and intensity intervals become the per-pixel parameter maps methods take."""
from __future__ import annotations

import numpy as np
import pytest

from quietlens.engine.image import Image
from quietlens.engine.regions import Region, Shape, rasterise, region_mask, region_maps


def test_rect_covers_exactly_its_pixels():
    mask = rasterise(Shape("rect", [(2, 1), (5, 4)]), (8, 10))
    expected = np.zeros((8, 10), bool)
    expected[1:4, 2:5] = True
    assert (mask == expected).all()


def test_rect_corners_in_any_order_and_clipped():
    a = rasterise(Shape("rect", [(5, 4), (2, 1)]), (8, 10))
    b = rasterise(Shape("rect", [(2, 1), (5, 4)]), (8, 10))
    assert (a == b).all()
    assert rasterise(Shape("rect", [(-5, -5), (100, 3)]), (8, 10)).sum() == 3 * 10


def test_ellipse_is_inscribed_and_symmetric():
    mask = rasterise(Shape("ellipse", [(0, 0), (20, 10)]), (10, 20))
    assert mask[5, 10] and not mask[0, 0] and not mask[9, 19]
    assert (mask == mask[::-1]).all() and (mask == mask[:, ::-1]).all()
    assert abs(mask.sum() - np.pi * 10 * 5) < 12


def test_brush_stroke_has_its_width():
    mask = rasterise(Shape("brush", [(5.5, 10.5), (25.5, 10.5)], radius=2), (20, 30))
    assert mask[10, 5:26].all() and mask[8:13, 15].all()
    assert not mask[7, 15] and not mask[13, 15]
    dot = rasterise(Shape("brush", [(5.5, 5.5)], radius=0), (10, 10))
    assert dot.sum() == 1 and dot[5, 5]


def test_shape_drawn_on_coronal_plane_extrudes_along_h():
    image = Image(np.zeros((4, 6, 8), np.float32), "ct", "ZHW", "dicom")
    # Coronal plane rows run over Z shown top-down from the last slice: row 0 is slice 3.
    mask = region_mask(Region("r", [Shape("rect", [(2, 0), (4, 1)], orientation="coronal")]), image)
    assert mask.shape == (4, 6, 8)
    assert mask[3, :, 2:4].all() and mask.sum() == 6 * 2


def test_intensity_interval_alone_and_intersected():
    data = np.arange(100, dtype=np.float32).reshape(10, 10)
    image = Image(data, "ct", "HW", "dicom")
    alone = region_mask(Region("hu", intensity=(20, 29)), image)
    assert (alone == ((data >= 20) & (data <= 29))).all()
    both = region_mask(Region("hu", [Shape("rect", [(0, 0), (5, 10)])], intensity=(20, 29)), image)
    assert both.sum() == 5 and both[2, :5].all()


def test_maps_later_regions_win_and_unchanged_params_are_left_out():
    image = Image(np.zeros((10, 10), np.float32), "ct", "HW", "dicom")
    a = Region("a", [Shape("rect", [(0, 0), (6, 10)])], multipliers={"strength": 0.5, "other": 1.0})
    b = Region("b", [Shape("rect", [(4, 0), (10, 10)])], multipliers={"strength": 0.0})
    maps = region_maps(image, [a, b])
    assert set(maps) == {"strength"}
    s = maps["strength"]
    assert s.dtype == np.float32 and s.shape == (10, 10)
    assert (s[:, :4] == 0.5).all() and (s[:, 4:] == 0.0).all()
    assert region_maps(image, [a, b], names=["other"]) == {}


def test_volume_and_colour_maps_have_the_spatial_shape():
    vol = Image(np.zeros((2, 3, 5, 6), np.float32), "mr", "TZHW", "nifti")
    maps = region_maps(vol, [Region("r", [Shape("ellipse", [(0, 0), (6, 5)])], multipliers={"strength": 0.2})])
    assert maps["strength"].shape == (3, 5, 6)
    photo = Image(np.zeros((5, 6, 3), np.float32), "photo", "HWC", "png")
    maps = region_maps(photo, [Region("r", [Shape("rect", [(0, 0), (3, 3)])], multipliers={"strength": 0.2})])
    assert maps["strength"].shape == (5, 6)


def test_unknown_shape_is_refused():
    with pytest.raises(ValueError):
        Shape("polygon", [(0, 0)])
