"""The name of every Celery task, one constant each.

`tasks/` registers its tasks under these names and the domain enqueues by them
(`deployer/jobs.py`), so `deployer` never imports `tasks`. No imports here: the
settings' beat schedule reads it before Django is set up.
"""

MODEL_VERSION_INSPECT = "rdeploy.model_version_inspect"
MODEL_VERSIONS_REQUEUE_STUCK = "rdeploy.model_versions_requeue_stuck"
DEPLOYMENT_ADVANCE = "rdeploy.deployment_advance"
PIPELINE_RECONCILE = "rdeploy.pipeline_reconcile"
ENDPOINT_PUSH_API_KEY = "rdeploy.endpoint_push_api_key"
ENDPOINT_WAKE = "rdeploy.endpoint_wake"
WORKER_SELFCHECK = "rdeploy.worker_selfcheck"
CONTAINER_ENGINE_CHECK = "rdeploy.container_engine_check"
GC_REPORT = "rdeploy.gc_report"
UPLOAD_TEMP_FILES_REMOVE_STALE = "rdeploy.upload_temp_files_remove_stale"
