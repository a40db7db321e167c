"""S3: model data (``model.tar.gz``) and image build contexts, keyed by content hash."""

from __future__ import annotations

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
