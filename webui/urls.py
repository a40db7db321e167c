from django.urls import path

from webui import views

app_name = "webui"

urlpatterns = [
    path("", views.home, name="home"),
    path("models/", views.model_list, name="model_list"),
    path("models/<int:pk>/", views.model_detail, name="model_detail"),
    path("endpoints/", views.endpoint_list, name="endpoint_list"),
    path("endpoints/<slug:name>/", views.endpoint_detail, name="endpoint_detail"),
    path("endpoints/<slug:name>/logs/", views.endpoint_logs, name="endpoint_logs"),
    path("tokens/", views.token_list, name="token_list"),
    path("tokens/<int:pk>/revoke/", views.token_revoke, name="token_revoke"),
]
