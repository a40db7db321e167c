"""S3: model data (``model.tar.gz``) and image build contexts, keyed by content hash; the
files SageMaker's data capture writes for a shadow (read in pages, in bounded pieces)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

from deployer.integrations.aws.client import aws_client, ok_if_missing, raises_aws_error


@raises_aws_error
def object_exists(bucket: str, key: str) -> bool:
    with ok_if_missing():
        aws_client("s3").head_object(Bucket=bucket, Key=key)
        return True
    return False


@raises_aws_error
def upload_file(bucket: str, key: str, path: Path, *, tags: dict[str, str]) -> None:
    """Upload a local file (multipart above 8 MB, handled by boto3) with object tags."""
    aws_client("s3").upload_file(str(path), bucket, key, ExtraArgs={"Tagging": urlencode(tags)})


@raises_aws_error
def delete_object(bucket: str, key: str) -> None:
    """Idempotent: S3 answers 204 for a key that is already gone."""
    aws_client("s3").delete_object(Bucket=bucket, Key=key)


@raises_aws_error
def object_tags(bucket: str, key: str) -> dict[str, str] | None:
    """The object's tags, or None when there is no such object."""
    with ok_if_missing():
        tag_set = aws_client("s3").get_object_tagging(Bucket=bucket, Key=key)["TagSet"]
        return {tag["Key"]: tag["Value"] for tag in tag_set}
    return None


@raises_aws_error
def list_keys(bucket: str, prefix: str) -> list[str]:
    paginator = aws_client("s3").get_paginator("list_objects_v2")
    keys: list[str] = []
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(item["Key"] for item in page.get("Contents", []))
    return keys


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int


@raises_aws_error
def objects_after(bucket: str, prefix: str, *, start_after: str = "", limit: int = 100) -> list[StoredObject]:
    """At most ``limit`` objects under ``prefix`` whose keys sort after ``start_after``, in
    key order (one ListObjectsV2 call)."""
    arguments = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": limit}
    if start_after:
        arguments["StartAfter"] = start_after
    page = aws_client("s3").list_objects_v2(**arguments)
    return [StoredObject(str(item["Key"]), int(item["Size"])) for item in page.get("Contents", [])]


@raises_aws_error
def read_start(bucket: str, key: str, *, max_bytes: int) -> bytes:
    """The object's first ``max_bytes`` bytes at most (a ranged GET: a huge object is
    never downloaded whole); b"" when it is gone."""
    with ok_if_missing():
        response = aws_client("s3").get_object(Bucket=bucket, Key=key, Range=f"bytes=0-{max_bytes - 1}")
        return bytes(response["Body"].read(max_bytes))
    return b""


@raises_aws_error
def delete_prefix(bucket: str, prefix: str) -> int:
    """Delete every object under ``prefix`` (1000 per call); returns how many."""
    client = aws_client("s3")
    deleted = 0
    while keys := [item["Key"] for item in client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]:
        client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": key} for key in keys], "Quiet": True})
        deleted += len(keys)
    return deleted
