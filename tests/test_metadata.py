from datetime import datetime, timezone

import pytest

from udfs.errors import MetadataError
from udfs.metadata import parse_landsat_mtl, parse_s2_mtd, parse_stac_properties, parse_time

MTD_0510 = """<?xml version="1.0"?>
<n1:Level-2A_User_Product xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-2A.xsd">
 <n1:General_Info><Product_Info>
  <PRODUCT_START_TIME>2024-06-21T10:36:29.024Z</PRODUCT_START_TIME>
  <PROCESSING_BASELINE>05.10</PROCESSING_BASELINE>
  <Datatake><SPACECRAFT_NAME>Sentinel-2B</SPACECRAFT_NAME></Datatake>
 </Product_Info>
 <Product_Image_Characteristics>
  <QUANTIFICATION_VALUES_LIST><BOA_QUANTIFICATION_VALUE unit="none">10000</BOA_QUANTIFICATION_VALUE></QUANTIFICATION_VALUES_LIST>
  <BOA_ADD_OFFSET_VALUES_LIST>
   <BOA_ADD_OFFSET band_id="0">-1000</BOA_ADD_OFFSET><BOA_ADD_OFFSET band_id="3">-1000</BOA_ADD_OFFSET>
   <BOA_ADD_OFFSET band_id="8">-1000</BOA_ADD_OFFSET>
  </BOA_ADD_OFFSET_VALUES_LIST>
 </Product_Image_Characteristics></n1:General_Info>
 <n1:Quality_Indicators_Info><Cloud_Coverage_Assessment>12.5</Cloud_Coverage_Assessment></n1:Quality_Indicators_Info>
</n1:Level-2A_User_Product>"""


def test_s2_mtd_offsets_from_the_product():
    info = parse_s2_mtd(MTD_0510)
    assert info.acquired == datetime(2024, 6, 21, 10, 36, 29, 24000, tzinfo=timezone.utc)
    assert info.platform == "sentinel-2b"
    assert info.cloud_cover == 12.5
    assert info.processing_baseline == "05.10"
    # (DN + BOA_ADD_OFFSET) / 10000: DN 2000 -> 0.1 for B04 (band_id 3) and B8A (band_id 8)
    scale, offset = info.scaling["B04"]
    assert 2000 * scale + offset == pytest.approx(0.1)
    assert info.scaling["B8A"] == (pytest.approx(1e-4), pytest.approx(-0.1))
    # B02 (band_id 1) has no offset element in this file: 0
    assert info.scaling["B02"] == (pytest.approx(1e-4), 0.0)


def test_s2_mtd_before_baseline_04_has_no_offset():
    old = MTD_0510.replace("05.10", "03.00")
    start = old.index("<BOA_ADD_OFFSET_VALUES_LIST>")
    end = old.index("</BOA_ADD_OFFSET_VALUES_LIST>") + len("</BOA_ADD_OFFSET_VALUES_LIST>")
    info = parse_s2_mtd(old[:start] + old[end:])
    assert all(off == 0.0 for _, off in info.scaling.values())


def test_s2_mtd_broken_xml_is_a_metadata_error():
    with pytest.raises(MetadataError, match="XML"):
        parse_s2_mtd("<not closed")


def test_landsat_mtl_real_file(shared_data):
    path = next((shared_data / "LC08_L2SP_001062_20201031_20201106_02_T2").glob("*_MTL.txt"))
    info = parse_landsat_mtl(path.read_text())
    assert info.platform == "landsat-8"
    assert info.cloud_cover == 99.94
    assert info.acquired.date().isoformat() == "2020-10-31"
    assert info.scaling["SR_B4"] == (2.75e-05, -0.2)
    json_info = parse_landsat_mtl(path.with_suffix(".json").read_text())
    assert json_info.scaling == info.scaling
    assert json_info.acquired == info.acquired


def test_landsat_mtl_without_date_is_refused():
    with pytest.raises(MetadataError, match="DATE_ACQUIRED"):
        parse_landsat_mtl("GROUP = LANDSAT_METADATA_FILE\nEND_GROUP = LANDSAT_METADATA_FILE\nEND\n")


def test_stac_properties_follow_baseline_and_offset_applied_flag():
    props = {
        "datetime": "2023-05-01T10:00:00Z",
        "platform": "sentinel-2a",
        "s2:processing_baseline": "05.09",
    }
    assert parse_stac_properties(props, "sentinel2-l2a").scaling["B04"][1] == pytest.approx(-0.1)
    props["earthsearch:boa_offset_applied"] = True
    assert parse_stac_properties(props, "sentinel2-l2a").scaling["B04"][1] == 0.0
    explicit = parse_stac_properties(props, "sentinel2-l2a", {"B04": (1e-4, -0.1)})
    assert explicit.scaling["B04"] == (1e-4, -0.1)


def test_parse_time_variants():
    assert parse_time("2020-10-31T14:31:47.8083990Z") == datetime(
        2020, 10, 31, 14, 31, 47, 808399, tzinfo=timezone.utc
    )
    assert parse_time("2020-02-19T11:34:25Z").tzinfo is not None
