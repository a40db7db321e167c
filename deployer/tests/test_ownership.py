from django.contrib.auth.models import AnonymousUser, User

from deployer.models import Endpoint, ModelVersion
from testsupport.factories import make_endpoint, make_model_version


def test_users_see_only_their_own_model_versions(owner: User, colleague: User, staff: User) -> None:
    mine = make_model_version(owner, "churn")
    theirs = make_model_version(colleague, "churn")

    assert list(ModelVersion.objects.visible_to(owner)) == [mine]
    assert list(ModelVersion.objects.visible_to(colleague)) == [theirs]
    assert set(ModelVersion.objects.visible_to(staff)) == {mine, theirs}
    assert not ModelVersion.objects.visible_to(AnonymousUser()).exists()


def test_users_see_only_their_own_endpoints(owner: User, colleague: User, staff: User) -> None:
    mine = make_endpoint(owner, "churn-prod")
    theirs = make_endpoint(colleague, "churn-staging")

    assert list(Endpoint.objects.visible_to(owner)) == [mine]
    assert not Endpoint.objects.visible_to(colleague).filter(pk=mine.pk).exists()
    assert set(Endpoint.objects.visible_to(staff)) == {mine, theirs}


def test_versions_number_per_owner_and_name(owner: User, colleague: User) -> None:
    assert make_model_version(owner, "churn").version == 1
    assert make_model_version(owner, "churn").version == 2
    assert make_model_version(colleague, "churn").version == 1
