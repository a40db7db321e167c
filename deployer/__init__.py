"""The rdeploy domain: model versions, endpoints, deployments, their services and targets."""
