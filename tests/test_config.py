import pytest

from pipelines.config import build_config, load_config
from udfs.errors import ConfigError


def test_local_and_cluster_profiles_load():
    local = load_config("local")
    assert local.spark.master == "local[2]"
    assert local.storage.format == "delta"
    assert local.ingest.tile_size == 256
    cluster = load_config("cluster")
    assert cluster.spark.master is None
    assert cluster.storage.root.startswith("s3a://")


def test_overrides_are_applied_and_typed():
    c = load_config(
        "local", ["ingest.tile_size=512", "ingest.strict=true", "storage.format=parquet"]
    )
    assert c.ingest.tile_size == 512
    assert c.ingest.strict is True
    assert c.storage.format == "parquet"


def test_spark_conf_override_goes_into_conf_mapping():
    c = load_config("local", ["spark.conf.spark.sql.shuffle.partitions=7"])
    assert c.spark.conf["spark.sql.shuffle.partitions"] == "7"


@pytest.mark.parametrize(
    "override, key",
    [
        ("ingest.tile_sise=512", "ingest.tile_sise"),
        ("ingest.tile_size=big", "ingest.tile_size"),
        ("ingest.tile_size=0", "ingest.tile_size"),
        ("ingest.resampling=lanczos9", "ingest.resampling"),
        ("ingest.overlap=200", "ingest.overlap"),
        ("storage.format=csv", "storage.format"),
        ("ingest.strict=perhaps", "ingest.strict"),
    ],
)
def test_bad_key_or_value_names_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config("local", [override])


def test_unknown_section_is_refused():
    with pytest.raises(ConfigError, match="unknown section 'ingets'"):
        build_config({"ingets": {}})


def test_missing_profile_is_refused():
    with pytest.raises(ConfigError, match="not found"):
        load_config("nosuchprofile")


def test_tiling_digest_changes_only_with_tiling_settings():
    a = load_config("local")
    b = load_config("local", ["ingest.strict=true", "ingest.source=/elsewhere"])
    c = load_config("local", ["ingest.overlap=8"])
    assert a.ingest.tiling_digest() == b.ingest.tiling_digest()
    assert a.ingest.tiling_digest() != c.ingest.tiling_digest()


# --------------------------------------------------------------------------- masks


def test_mask_keys_default_to_todays_masks():
    f = load_config("local").features
    assert f.scl_masked == (0, 1, 3, 8, 9, 10, 11)
    assert f.qa_pixel_flags == ("fill", "dilated_cloud", "cirrus", "cloud", "cloud_shadow", "snow")
    assert f.qa_pixel_min_confidence == {}
    assert load_config("cluster").features.scl_masked == f.scl_masked
    m = f.masks()
    assert (m.scl_classes, m.qa_flags, m.min_confidence) == (
        f.scl_masked,
        f.qa_pixel_flags,
        {},
    )


def test_mask_keys_are_read_from_the_command_line_typed():
    c = load_config(
        "local",
        [
            "features.scl_masked=3,8,9",
            "features.qa_pixel_flags=fill,cloud",
            "features.qa_pixel_min_confidence=cloud_confidence:2,cirrus_confidence:3",
        ],
    )
    assert c.features.scl_masked == (3, 8, 9)
    assert c.features.qa_pixel_flags == ("fill", "cloud")
    assert c.features.qa_pixel_min_confidence == {"cloud_confidence": 2, "cirrus_confidence": 3}
    assert c.features.masks().min_confidence == {"cloud_confidence": 2, "cirrus_confidence": 3}
    assert load_config("local", ["features.qa_pixel_min_confidence="]).features.masks() == (
        load_config("local").features.masks()
    )


def test_mask_keys_from_yaml_lists_and_mappings():
    c = build_config(
        {"features": {"scl_masked": [9, 8], "qa_pixel_min_confidence": {"cloud_confidence": 3}}}
    )
    assert c.features.scl_masked == (9, 8)
    assert c.features.qa_pixel_min_confidence == {"cloud_confidence": 3}


@pytest.mark.parametrize(
    "override, key",
    [
        ("features.scl_masked=12", "features.scl_masked"),
        ("features.scl_masked=three", "features.scl_masked"),
        ("features.qa_pixel_flags=clouds", "features.qa_pixel_flags"),
        ("features.qa_pixel_min_confidence=cloud_confidence:0", "features.qa_pixel_min_confidence"),
        ("features.qa_pixel_min_confidence=cloudiness:2", "features.qa_pixel_min_confidence"),
        ("features.qa_pixel_min_confidence=cloud_confidence", "features.qa_pixel_min_confidence"),
        ("features.qa_pixel_min_confidence=cloud_confidence:x", "features.qa_pixel_min_confidence"),
    ],
)
def test_bad_mask_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config("local", [override])


def test_features_digest_changes_with_masks_and_indices_not_with_the_cloud_limit():
    base = load_config("local").features.digest()
    assert load_config("local", ["features.max_cloud_fraction=0.1"]).features.digest() == base
    assert load_config("local", ["features.reader=spark"]).features.digest() == base
    for override in (
        "features.scl_masked=0,1,3,8,9,10",
        "features.qa_pixel_flags=fill,cloud",
        "features.qa_pixel_min_confidence=cloud_confidence:3",
        "features.indices=NDVI",
    ):
        assert load_config("local", [override]).features.digest() != base, override
    # Order does not matter
    a = load_config("local", ["features.scl_masked=9,8,3"]).features.digest()
    assert a == load_config("local", ["features.scl_masked=3,8,9"]).features.digest()
