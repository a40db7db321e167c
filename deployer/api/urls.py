from rest_framework.routers import DefaultRouter

from deployer.api import schema  # noqa: F401  (registers the OpenAPI auth extension)
from deployer.api.tokens import ApiTokenViewSet

router = DefaultRouter(trailing_slash=True)
router.register("tokens", ApiTokenViewSet, basename="api-token")

urlpatterns = router.urls
