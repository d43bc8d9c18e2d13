"""Runtimes: where a round runs (TFF's C++ worker, this process, remote TFF workers), one module each.

Importing this package imports no TensorFlow: `tffpipe.worker` uses its process helpers.
"""
