from django.urls import path
from rest_framework.routers import DefaultRouter

from deployer.api import schema  # noqa: F401  (registers the OpenAPI auth extension)
from deployer.api.costs import CostSummaryView
from deployer.api.endpoints import endpoint_invocations
from deployer.api.endpoints import router as endpoints_router
from deployer.api.model_versions import ModelVersionViewSet
from deployer.api.tokens import ApiTokenViewSet

router = DefaultRouter(trailing_slash=True)
router.register("tokens", ApiTokenViewSet, basename="api-token")
router.register("models", ModelVersionViewSet, basename="model-version")

urlpatterns = [
    path("endpoints/<slug:name>/invocations", endpoint_invocations, name="endpoint-invocations"),
    path("costs", CostSummaryView.as_view(), name="cost-summary"),
    *router.urls,
    # Its own router: the paths have no trailing slash (the slash is optional).
    *endpoints_router.urls,
]
