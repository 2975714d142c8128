"""The synthetic Remidio reports look, to a reader, like the camera's: two A4 pages, no text
layer (every line a bitmap), or the same layout as real text when asked."""

from __future__ import annotations

import io
import random

import pdfplumber
import pytest

from testkit.remidio_report import PRODUCER, ReportValues, draw_report, random_report_values
from testkit.synthetic import fundus_image


@pytest.fixture(scope="module")
def values() -> ReportValues:
    tiles = [("RE", fundus_image(size=200, seed=1, burned_in_text=None))]
    return random_report_values(random.Random(4), tiles=tiles)


def test_an_image_only_report_has_two_a4_pages_and_no_text_layer(values: ReportValues) -> None:
    with pdfplumber.open(io.BytesIO(draw_report(values))) as pdf:
        assert len(pdf.pages) == 2
        assert all(round(p.width) == 595 and round(p.height) == 842 for p in pdf.pages)
        assert all(not (p.extract_text() or "").strip() for p in pdf.pages)
        assert all(p.images for p in pdf.pages)
        assert pdf.metadata["Producer"] == PRODUCER


def test_a_text_layer_report_prints_the_same_values_as_text(values: ReportValues) -> None:
    with pdfplumber.open(io.BytesIO(draw_report(values, text_layer=True))) as pdf:
        first, second = (p.extract_text() for p in pdf.pages)
    assert "Diabetic Retinopathy Report" in first and "Glaucoma Screening Report" in second
    assert f"Patient MRN: {values.mrn}" in first and f"Name: {values.name}" in second
    assert values.dr_result in first and values.glaucoma_result in second
    assert f"VCDR - {values.vcdr_right:.2f} ({values.vcdr_right_note})" in second


def test_random_values_are_plausible_and_repeatable() -> None:
    tiles = [("LE", b"jpeg")]
    made = [random_report_values(random.Random(seed), tiles=tiles) for seed in range(40)]
    again = random_report_values(random.Random(0), tiles=tiles)
    assert made[0] == again
    assert all(len(v.mrn) == 8 and v.mrn.isdigit() for v in made)
    assert any(v.doctor is None for v in made) and any(v.dr_warning for v in made)
    assert any(v.name[0].islower() for v in made)
    assert any("Refferable" in v.glaucoma_result or "Referrable" in v.glaucoma_result for v in made)
    assert any(0.0 in (v.vcdr_left, v.vcdr_right) for v in made)


def test_only_known_fields_can_be_smeared(values: ReportValues) -> None:
    with pytest.raises(ValueError, match="cannot smear"):
        draw_report(values, illegible=("name",))
