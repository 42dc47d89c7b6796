"""pipelines.session's object-store settings: S3A jars and settings from the environment.

Fast (no Spark). The jars themselves are exercised against a real S3 server in
tests/test_object_store.py; here, what the session asks Maven for and what it sets.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyspark

from pipelines.config import load_config
from pipelines.session import (
    hadoop_version,
    s3_packages,
    s3a_settings,
    session_packages,
    spark_defaults,
    uses_object_store,
)


def test_hadoop_aws_matches_the_hadoop_jars_inside_pyspark():
    jars = Path(pyspark.__file__).resolve().parent / "jars"
    shipped = [p.name for p in jars.glob("hadoop-client-api-*.jar")]
    assert shipped == [f"hadoop-client-api-{hadoop_version()}.jar"]
    assert s3_packages()[0] == f"org.apache.hadoop:hadoop-aws:{hadoop_version()}"
    # The SDK's modules, never its 640 MB bundle.
    assert not any(p.startswith("software.amazon.awssdk:bundle") for p in s3_packages())
    sdk = {p.rsplit(":", 1)[1] for p in s3_packages()[1:]}
    assert len(sdk) == 1


def test_object_store_is_detected_from_the_root_or_the_sources():
    assert not uses_object_store(load_config("local", []))
    assert uses_object_store(load_config("local", ["storage.root=s3://bucket/lake"]))
    assert uses_object_store(
        load_config("local", ["ingest.source=data/demo/scenes,s3a://bucket/scenes"])
    )
    spark = load_config("local", []).spark
    assert session_packages(spark, s3=True)[1:] == s3_packages()
    assert session_packages(spark, s3=False) == session_packages(spark)[:1] + list(spark.packages)


def test_s3a_settings_come_from_the_environment_without_credentials():
    env = {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
        "AWS_REGION": "eu-central-1",
        "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI",
    }
    got = s3a_settings(env)
    assert got["spark.hadoop.fs.s3a.endpoint"] == "http://127.0.0.1:9000"
    assert got["spark.hadoop.fs.s3a.path.style.access"] == "true"
    assert got["spark.hadoop.fs.s3a.connection.ssl.enabled"] == "false"
    assert got["spark.hadoop.fs.s3a.endpoint.region"] == "eu-central-1"
    assert got["spark.hadoop.fs.s3.impl"].endswith("S3AFileSystem")
    assert not any("AKIDEXAMPLE" in v or "wJalrXUtnFEMI" in v for v in got.values())
    # The service-specific endpoint wins; AWS itself (no endpoint) keeps S3A's defaults.
    assert (
        s3a_settings({**env, "AWS_ENDPOINT_URL_S3": "https://s3.example.org"})[
            "spark.hadoop.fs.s3a.connection.ssl.enabled"
        ]
        == "true"
    )
    assert "spark.hadoop.fs.s3a.endpoint" not in s3a_settings({})


def test_spark_defaults_for_object_stores_name_the_s3a_jars():
    text = spark_defaults(object_store=True)
    assert "hadoop-aws" in text
    assert "org.apache.hadoop.fs.s3a.S3AFileSystem" in text
    assert "hadoop-aws" not in spark_defaults(object_store=False)


def test_hadoop_version_reads_spark_home_first(tmp_path, monkeypatch):
    """Under spark-submit pyspark comes from python/lib/pyspark.zip (no jars beside it):
    the jars are under $SPARK_HOME."""
    from pipelines.session import hadoop_version

    installed = hadoop_version() if "SPARK_HOME" not in os.environ else None
    (tmp_path / "jars").mkdir()
    (tmp_path / "jars" / "hadoop-client-api-9.8.7.jar").write_bytes(b"")
    monkeypatch.setenv("SPARK_HOME", str(tmp_path))
    assert hadoop_version() == "9.8.7"
    monkeypatch.setenv("SPARK_HOME", str(tmp_path / "missing"))
    assert hadoop_version() == (installed or hadoop_version())
    assert hadoop_version().startswith("3.")
