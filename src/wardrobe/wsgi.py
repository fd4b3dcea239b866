"""The WSGI entry point: the only module that calls create_app (gunicorn imports it in each worker)."""

from wardrobe.app import create_app
from wardrobe.config import Config

app = create_app(Config.from_env())
