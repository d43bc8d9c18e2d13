"""The sweep folder's TensorBoard HParams configuration: its columns are the swept settings and the evaluation metrics.

Written with TensorBoard's protocol buffers and record writer directly (what
`hparams_config` does through TensorFlow; TensorBoard's `EventFileWriter`
would load TensorFlow for its file access), so the sweep process never loads
TensorFlow. Each trial's own HParams summary names its settings by flag, so
the columns listed here match them.
"""

import glob
import os
import socket
import time
from typing import Sequence

from tensorboard.compat.proto import event_pb2
from tensorboard.compat.proto import summary_pb2
from tensorboard.plugins.hparams import api_pb2
from tensorboard.plugins.hparams import metadata
from tensorboard.plugins.hparams import plugin_data_pb2
from tensorboard.summary.writer import record_writer

_SUFFIX = ".hparams"


def write_config(folder: str, settings: Sequence[str], metrics: Sequence[str]) -> None:
    """Writes an HParams experiment to `folder`: one column per setting, then per metric."""
    experiment = api_pb2.Experiment(
        time_created_secs=time.time(),
        hparam_infos=[api_pb2.HParamInfo(name=name) for name in settings],
        metric_infos=[api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag), display_name=tag) for tag in metrics],
    )
    content = plugin_data_pb2.HParamsPluginData(experiment=experiment, version=metadata.PLUGIN_DATA_VERSION)
    summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(
        tag=metadata.EXPERIMENT_TAG,
        metadata=metadata.create_summary_metadata(content),
        tensor=metadata.NULL_TENSOR,
    )])
    earlier = glob.glob(os.path.join(folder, f"events.out.tfevents.*{_SUFFIX}"))
    path = os.path.join(folder, f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}{_SUFFIX}")
    with open(f"{path}.tmp", "wb") as f:
        records = record_writer.RecordWriter(f)
        records.write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2").SerializeToString())
        records.write(event_pb2.Event(wall_time=time.time(), step=0, summary=summary).SerializeToString())
    os.replace(f"{path}.tmp", path)
    for old in earlier:  # TensorBoard would take whichever configuration it met first
        if old != path:
            os.remove(old)
