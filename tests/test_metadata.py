from datetime import datetime, timezone

import pytest

from udfs.errors import MetadataError, ProductMismatchError
from udfs.metadata import (
    baseline_from_name,
    check_name,
    name_info,
    normalize_platform,
    parse_landsat_mtl,
    parse_s2_mtd,
    parse_s2_tileinfo,
    parse_stac_properties,
    parse_time,
)

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
    assert info.platform == "landsat-8" and info.sensor == "landsat-c2l2"
    # PRODUCT_CONTENTS: PROCESSING_LEVEL = "L2SP", COLLECTION_NUMBER = 02
    assert info.processing_level == "L2SP" and info.processing_baseline == "02"
    assert info.scaling_source == "metadata"
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
    # no s2:product_type: the id's MSIL2A gives the level
    sid = "S2A_MSIL2A_20230501T100000_N0509_R000_T31UFU_20230501T120000"
    info = parse_stac_properties(props, item_id=sid)
    assert info.scaling["B04"][1] == pytest.approx(-0.1)
    assert info.scaling_source == "baseline rule" and info.processing_level == "L2A"
    props["earthsearch:boa_offset_applied"] = True
    assert parse_stac_properties(props, item_id=sid).scaling["B04"][1] == 0.0
    explicit = parse_stac_properties(props, {"B04": (1e-4, -0.1)}, item_id=sid)
    assert explicit.scaling["B04"] == (1e-4, -0.1)


def test_parse_time_variants():
    assert parse_time("2020-10-31T14:31:47.8083990Z") == datetime(
        2020, 10, 31, 14, 31, 47, 808399, tzinfo=timezone.utc
    )
    assert parse_time("2020-02-19T11:34:25Z").tzinfo is not None


# ----------------------------------------------------------------------------- real MTDs

MTD_DIR = "s2-metadata"
L2A_0400 = "S2B_MSIL2A_20220413T150759_N0400_R025_T33XWJ_20220414T082126.SAFE"
L2A_0509 = "S2A_MSIL2A_20230625T234621_N0509_R073_T01WCP_20230626T022157.SAFE"
L2A_0212 = "S2A_MSIL2A_20190212T192651_N0212_R013_T07HFE_20201007T160857.SAFE"
L1C_0301 = "S2A_MSIL1C_20210908T042701_N0301_R133_T46RER_20210908T070248.SAFE"
L2A_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")


def real_mtd(shared_data, safe: str) -> str:
    return next((shared_data / MTD_DIR / safe).glob("MTD_MSI*.xml")).read_text()


@pytest.mark.parametrize(
    "safe, baseline, platform",
    [(L2A_0400, "04.00", "sentinel-2b"), (L2A_0509, "05.09", "sentinel-2a")],
)
def test_real_mtd_from_baseline_04_gives_offset_minus_1000_for_every_band(
    shared_data, safe, baseline, platform
):
    text = real_mtd(shared_data, safe)
    # Independent look at the file: ESA lists BOA_ADD_OFFSET -1000 for all 13 band ids.
    assert text.count('<BOA_ADD_OFFSET band_id="') == 13
    assert text.count(">-1000</BOA_ADD_OFFSET>") == 13
    info = parse_s2_mtd(text)
    assert (info.platform, info.processing_level, info.processing_baseline) == (
        platform,
        "L2A",
        baseline,
    )
    assert info.sensor == "sentinel2-l2a" and info.scaling_source == "metadata"
    # (DN - 1000) / 10000: scale 1e-4, offset -0.1 for every reflectance band
    assert sorted(info.scaling) == sorted(L2A_BANDS)
    for band, (scale, offset) in info.scaling.items():
        assert scale == pytest.approx(1e-4), band
        assert offset == pytest.approx(-0.1), band
    scale, offset = info.scaling["B04"]
    assert 1000 * scale + offset == pytest.approx(0.0)  # DN 1000 is reflectance 0
    assert 500 * scale + offset == pytest.approx(-0.05)  # dark water: negative


def test_real_mtd_04_without_its_offset_list_follows_esa_baseline_rule(shared_data):
    text = real_mtd(shared_data, L2A_0509)
    start = text.index("<BOA_ADD_OFFSET_VALUES_LIST>")
    end = text.index("</BOA_ADD_OFFSET_VALUES_LIST>") + len("</BOA_ADD_OFFSET_VALUES_LIST>")
    info = parse_s2_mtd(text[:start] + text[end:])
    assert info.scaling_source == "baseline rule"
    assert info.scaling["B11"] == (pytest.approx(1e-4), pytest.approx(-0.1))


def test_real_mtd_before_04_has_no_offset(shared_data):
    info = parse_s2_mtd(real_mtd(shared_data, L2A_0212))
    assert (info.platform, info.processing_level, info.processing_baseline) == (
        "sentinel-2a",
        "L2A",
        "02.12",
    )
    assert all(v == (pytest.approx(1e-4), 0.0) for v in info.scaling.values())
    assert info.scaling_source == "baseline rule"
    assert info.cloud_cover == pytest.approx(51.580326)


def test_real_l1c_mtd_is_l1c_with_its_baseline(shared_data):
    info = parse_s2_mtd(real_mtd(shared_data, L1C_0301))
    assert info.sensor == "sentinel2-l1c" and info.processing_level == "L1C"
    assert info.processing_baseline == "03.01" and info.platform == "sentinel-2a"
    assert info.cloud_cover == pytest.approx(88.2972)
    # L1C carries B10 (cirrus); baseline 03.01 < 04.00: no RADIO_ADD_OFFSET
    assert "B10" in info.scaling
    assert all(v == (pytest.approx(1e-4), 0.0) for v in info.scaling.values())


def test_real_tileinfo_gives_baseline_and_level_from_the_product_name(shared_data):
    text = (shared_data / "S2A_MSIL1C_20170729_T19UDP" / "tileInfo.json").read_text()
    info = parse_s2_tileinfo(text)
    # productName S2A_MSIL1C_20170729T153601_N0205_R111_T19UDP_20170729T153557
    assert (info.platform, info.processing_level, info.processing_baseline) == (
        "sentinel-2a",
        "L1C",
        "02.05",
    )
    assert info.sensor == "sentinel2-l1c" and info.cloud_cover == 24.48
    assert info.scaling["B10"] == (pytest.approx(1e-4), 0.0)
    newer = parse_s2_tileinfo(text.replace("_N0205_", "_N0400_"))
    assert newer.scaling["B04"] == (pytest.approx(1e-4), pytest.approx(-0.1))
    assert newer.scaling_source == "baseline rule"


def test_landsat_level_and_spacecraft_decide_the_sensor(shared_data):
    path = next((shared_data / "LC08_L2SP_001062_20201031_20201106_02_T2").glob("*_MTL.txt"))
    text = path.read_text()
    tm = parse_landsat_mtl(
        text.replace('SPACECRAFT_ID = "LANDSAT_8"', 'SPACECRAFT_ID = "LANDSAT_7"')
    )
    assert tm.platform == "landsat-7" and tm.sensor == "landsat-c2l2-tm"
    assert "SR_B6" not in tm.scaling  # TM/ETM+ band 6 is thermal
    sr = parse_landsat_mtl(text.replace('PROCESSING_LEVEL = "L2SP"', 'PROCESSING_LEVEL = "L2SR"'))
    assert sr.processing_level == "L2SR" and sr.sensor == "landsat-c2l2"
    with pytest.raises(MetadataError, match="landsat-1"):
        parse_landsat_mtl(text.replace('"LANDSAT_8"', '"LANDSAT_1"'))


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Sentinel-2A", "sentinel-2a"),
        ("LANDSAT_8", "landsat-8"),
        ("landsat-9", "landsat-9"),
        ("Landsat 7", "landsat-7"),
        ("sentinel-2b", "sentinel-2b"),
    ],
)
def test_platform_names_follow_the_stac_convention(raw, expected):
    assert normalize_platform(raw) == expected


def test_usgs_stac_platform_is_normalised():
    props = {"datetime": "2020-01-14T17:05:46Z", "platform": "LANDSAT_8", "landsat:correction": "L2SP",
             "landsat:collection_number": "02"}  # fmt: skip
    info = parse_stac_properties(props, item_id="LC08_L2SP_028030_20200114_20200824_02_T1_SR")
    assert (info.platform, info.processing_level, info.processing_baseline) == (
        "landsat-8",
        "L2SP",
        "02",
    )
    assert info.scaling["SR_B4"] == (2.75e-5, -0.2) and info.scaling_source == "sensor default"


@pytest.mark.parametrize(
    "name, platform, level, baseline",
    [
        ("S2A_MSIL1C_20170729T153601_N0205_R111_T19UDP_20170729T153557", "sentinel-2a", "L1C", "02.05"),
        ("S2B_MSIL2A_20220413T150759_N0400_R025_T33XWJ_20220414T082126.SAFE", "sentinel-2b", "L2A", "04.00"),
        ("S2A_29RKH_20200219_0_L2A", "sentinel-2a", "L2A", None),
        ("LC08_L2SR_081119_20200101_20200823_02_T2", "landsat-8", "L2SR", "02"),
        ("LE07_L2SP_044033_20210329_20210424_02_T1_SR", "landsat-7", "L2SP", "02"),
        ("holiday_photos", None, None, None),
    ],
)  # fmt: skip
def test_product_names_state_platform_level_and_baseline(name, platform, level, baseline):
    said = name_info(name)
    assert (said.platform, said.processing_level, said.processing_baseline) == (
        platform,
        level,
        baseline,
    )


def test_baseline_from_a_product_name():
    assert (
        baseline_from_name("S2A_MSIL2A_20200219T112111_N0214_R037_T29RKH_20200219T123947")
        == "02.14"
    )
    assert baseline_from_name("S2A_29RKH_20200219_0_L2A") is None


def test_a_name_that_disagrees_with_the_metadata_is_rejected_with_both_values():
    info = parse_s2_mtd(MTD_0510)  # Sentinel-2B, Level-2A (root element)
    with pytest.raises(ProductMismatchError) as e:
        check_name(info, "S2A_MSIL2A_20240621T103629_N0510_R008_T31UFU_20240621T1", "SAFE name")
    assert "'sentinel-2a'" in e.value.reason and "'sentinel-2b'" in e.value.reason
    with pytest.raises(ProductMismatchError, match="'L1C'.*'L2A'"):
        check_name(info, "S2B_MSIL1C_20240621T103629_N0510_R008_T31UFU_20240621T1", "SAFE name")
    check_name(info, "holiday_photos", "folder name")  # not a product name: nothing to check
