from django.urls import path

from webui import views

app_name = "webui"

urlpatterns = [
    path("", views.home, name="home"),
    path("models/", views.model_list, name="model_list"),
    path("models/upload/", views.model_upload, name="model_upload"),
    path("models/<int:pk>/", views.model_detail, name="model_detail"),
    path("models/<int:pk>/deploy/", views.model_deploy, name="model_deploy"),
    path("endpoints/", views.endpoint_list, name="endpoint_list"),
    path("endpoints/<slug:name>/", views.endpoint_detail, name="endpoint_detail"),
    path("endpoints/<slug:name>/logs/", views.endpoint_log_tail, name="endpoint_logs"),
    path("endpoints/<slug:name>/invoke/", views.endpoint_invoke_form, name="endpoint_invoke"),
    path("endpoints/<slug:name>/update/", views.endpoint_update_form, name="endpoint_update"),
    path("endpoints/<slug:name>/rollback/", views.endpoint_rollback_form, name="endpoint_rollback"),
    path("endpoints/<slug:name>/stop/", views.endpoint_stop_form, name="endpoint_stop"),
    path("endpoints/<slug:name>/start/", views.endpoint_start_form, name="endpoint_start"),
    path("endpoints/<slug:name>/shadow/", views.endpoint_shadow_start_form, name="endpoint_shadow"),
    path("endpoints/<slug:name>/shadow/promote/", views.endpoint_shadow_promote_form, name="endpoint_shadow_promote"),
    path("endpoints/<slug:name>/shadow/stop/", views.endpoint_shadow_stop_form, name="endpoint_shadow_stop"),
    path("endpoints/<slug:name>/delete/", views.endpoint_delete_form, name="endpoint_delete"),
    path("endpoints/<slug:name>/rotate-key/", views.endpoint_rotate_key_form, name="endpoint_rotate_key"),
    path("tokens/", views.token_list, name="token_list"),
    path("tokens/<int:pk>/revoke/", views.token_revoke, name="token_revoke"),
]
