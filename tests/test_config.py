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
