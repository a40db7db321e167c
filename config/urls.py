from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from config.views import healthz, readyz
from deployer.api.endpoints import public_invocations
from webui.login import ThrottledAdminAuthentication, ThrottledLoginView

# The admin signs in through the same throttle as the dashboard (webui/login.py).
admin.site.login_form = ThrottledAdminAuthentication

# An unknown path under /api/ answers JSON, as the API's own 404s do.
handler404 = "deployer.api.errors.not_found"

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
    path("admin/", admin.site.urls),
    path("accounts/login/", ThrottledLoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("api/v1/", include("deployer.api.urls")),
    # The public API of endpoints created with "public": true (x-api-key, throttled).
    path("e/<slug:name>/invocations", public_invocations, name="public-invocations"),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("", include("webui.urls")),
]
