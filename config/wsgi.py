import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django_application = get_wsgi_application()

# Imported after Django is set up: it imports views and models.
from deployer.api.fast_path import InvocationFastPath  # noqa: E402

# Prediction requests skip the middleware they do not use (see deployer/api/fast_path.py).
application = InvocationFastPath(django_application)
