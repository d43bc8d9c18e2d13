"""tffpipe: a practical federated learning pipeline on TensorFlow Federated."""

import os
import warnings

# Set before any TensorFlow import (the package's modules import it), so the
# commands (`python -m tffpipe.train`, `python -m tffpipe.tasks`) start
# quietly. TF 2.14 prints spurious "Unable to register cuDNN factory" errors
# and CUDA probing notes at import even without a GPU; set
# TF_CPP_MIN_LOG_LEVEL yourself to see them.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# gRPC (TFF's link to its worker) notes every fork while other threads use it.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

# googleapis-common-protos 1.61 (pinned by TFF 0.87) imports pkg_resources in
# `google/rpc/__init__.py`, which warns on every start-up with setuptools 80.
# Not actionable for users; it would also break one-line error messages.
warnings.filterwarnings("ignore", message="pkg_resources is deprecated as an API", category=UserWarning)

__version__ = "0.1.0"


def __getattr__(name):
    # `tffpipe.run` loads TensorFlow; importing `tffpipe` (or `tffpipe.worker`) does not.
    if name in ("run", "Result"):
        from tffpipe import api

        return getattr(api, name)
    if name in ("load_run", "load_runs"):
        from tffpipe import results

        return getattr(results, name)
    raise AttributeError(f"module 'tffpipe' has no attribute {name!r}")
