from django.contrib.auth.models import User

from deployer.model_files import model_version_directory_digest
from testsupport.factories import make_model_version

SCHEMA_A = {"format_version": 1, "schema": {"columns": [{"name": "x", "type": "numeric"}]}}
SCHEMA_B = {"format_version": 1, "schema": {"columns": [{"name": "x", "type": "factor", "levels": ["a"]}]}}


def test_the_same_bytes_with_another_rdeploy_json_name_other_model_data(owner: User, colleague: User) -> None:
    first = make_model_version(owner, "churn", content=b"model", inspection={"rdeploy_json": SCHEMA_A})
    same = make_model_version(colleague, "churn", content=b"model", inspection={"rdeploy_json": SCHEMA_A})
    other = make_model_version(colleague, "other", content=b"model", inspection={"rdeploy_json": SCHEMA_B})
    same.sha256 = other.sha256 = first.sha256

    assert model_version_directory_digest(first) == model_version_directory_digest(same)
    assert model_version_directory_digest(first) != model_version_directory_digest(other)
    assert len(model_version_directory_digest(first)) == 64
