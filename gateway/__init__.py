"""store-gateway: the store-side daemon of omnichannel retail."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("store-gateway")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+source"
