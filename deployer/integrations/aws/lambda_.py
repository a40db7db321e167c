"""Lambda: the small function that puts a public API in front of a SageMaker endpoint."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from deployer.integrations.aws.client import (
    aws_client,
    ok_if_exists,
    ok_if_missing,
    raises_aws_error,
    unless_missing,
)


def package(handler_file: Path) -> bytes:
    """A deployment zip holding ``handler.py``, reproducible (fixed timestamps)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        info = zipfile.ZipInfo("handler.py", date_time=(1980, 1, 1, 0, 0, 0))
        info.external_attr = 0o644 << 16
        archive.writestr(info, handler_file.read_bytes())
    return buffer.getvalue()


@raises_aws_error
def create_function(
    name: str, *, role_arn: str, code: bytes, environment: dict[str, str], tags: dict[str, str], timeout: int
) -> str:
    """Create the function (kept if it exists); returns its ARN."""
    client = aws_client("lambda")
    with ok_if_exists():
        return str(
            client.create_function(
                FunctionName=name,
                Runtime="python3.12",
                Role=role_arn,
                Handler="handler.handler",
                Code={"ZipFile": code},
                Environment={"Variables": environment},
                Timeout=timeout,
                MemorySize=256,
                Tags=tags,
                Publish=False,
            )["FunctionArn"]
        )
    return str(client.get_function(FunctionName=name)["Configuration"]["FunctionArn"])


@raises_aws_error
def allow_api_gateway(name: str, *, statement_id: str, source_arn: str) -> None:
    """Let exactly one API (``source_arn``) invoke the function."""
    with ok_if_exists():
        aws_client("lambda").add_permission(
            FunctionName=name,
            StatementId=statement_id,
            Action="lambda:InvokeFunction",
            Principal="apigateway.amazonaws.com",
            SourceArn=source_arn,
        )


@raises_aws_error
def delete_function(name: str) -> None:
    """Also removes its resource policy (the API Gateway permission)."""
    with ok_if_missing():
        aws_client("lambda").delete_function(FunctionName=name)


@raises_aws_error
def functions(prefix: str) -> list[tuple[str, str]]:
    """(name, ARN) of every function whose name starts with ``prefix``."""
    found: list[tuple[str, str]] = []
    for page in aws_client("lambda").get_paginator("list_functions").paginate():
        for function in page["Functions"]:
            if function["FunctionName"].startswith(prefix):
                found.append((str(function["FunctionName"]), str(function["FunctionArn"])))
    return found


@raises_aws_error
def tags_of(arn: str) -> dict[str, str]:
    return dict(unless_missing(lambda: aws_client("lambda").list_tags(Resource=arn)["Tags"], {}))


@raises_aws_error
def function_tags(name: str) -> dict[str, str] | None:
    """The function's tags, or None when there is no such function."""
    client = aws_client("lambda")
    with ok_if_missing():
        arn = client.get_function(FunctionName=name)["Configuration"]["FunctionArn"]
        return dict(client.list_tags(Resource=arn)["Tags"])
    return None


@raises_aws_error
def environment_of(name: str) -> dict[str, str] | None:
    """The function's environment variables, or None when the function does not exist."""
    with ok_if_missing():
        configuration = aws_client("lambda").get_function_configuration(FunctionName=name)
        return dict((configuration.get("Environment") or {}).get("Variables") or {})
    return None


@raises_aws_error
def set_environment(name: str, environment: dict[str, str]) -> None:
    """Lambda applies it asynchronously: see ``update_finished``."""
    aws_client("lambda").update_function_configuration(FunctionName=name, Environment={"Variables": environment})


@raises_aws_error
def update_finished(name: str) -> bool:
    """Whether new invocations run with the function's latest configuration (its last
    update is no longer InProgress); a missing function has nothing pending."""
    with ok_if_missing():
        configuration = aws_client("lambda").get_function_configuration(FunctionName=name)
        return configuration.get("LastUpdateStatus") != "InProgress"
    return True
