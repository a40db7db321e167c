"""The model directory's old home, kept until deployer/targets/sagemaker.py imports
deployer/model_files.py (issue 13): upload and deletion are services/model_intake.py,
inspection services/model_inspection.py."""

from deployer.model_files import model_version_directory_digest as model_version_directory_digest
from deployer.model_files import model_version_materialize as model_version_materialize
