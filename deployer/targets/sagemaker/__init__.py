"""The ``sagemaker`` target: the R runtime image in ECR, the model as data in S3, a SageMaker
model + endpoint config + endpoint, and optionally a public API (API Gateway + Lambda).

``target.SageMakerTarget`` lists the steps and dispatches each through ``target.STEPS`` to
the module of its concern: ``model_data`` (upload), ``image`` (CodeBuild or local engine
build), ``endpoint`` (model, config, endpoint, autoscaling, traffic), ``public_api``
(Lambda, API Gateway, key rotation), ``teardown`` (retire, delete, discard),
``cloud_logs`` (log groups and copying their lines); ``names`` and ``options`` serve them
all. Shared by content: model data (``<prefix>/model-data/<model directory digest>/model.tar.gz``)
and images (tagged by the build context's content hash; a new model version needing the
same R packages builds nothing).

Every AWS call goes through ``deployer.integrations.aws``; see docs/sagemaker.md.
"""
