"""tffpipe: a practical federated learning pipeline on TensorFlow Federated."""

import warnings

# googleapis-common-protos 1.61 (pinned by TFF 0.87) imports pkg_resources in
# `google/rpc/__init__.py`, which warns on every start-up with setuptools 80.
# Not actionable for users; it would also break one-line error messages.
warnings.filterwarnings(
    "ignore", message="pkg_resources is deprecated as an API", category=UserWarning
)

__version__ = "0.1.0"
