"""`shakespeare`: Next-character prediction on Shakespeare, one client per speaking role.

Data: TFF's Federated Shakespeare (LEAF, Caldas et al. 2018; McMahan et al.
2017), file `shakespeare.sqlite` (loaded by
`tff.simulation.datasets.shakespeare.load_data`): 715 speaking roles of the
complete plays, 16,068 training and 2,356 test snippets (lines). Each role's
lines are split into a train and a test part; evaluation uses the test parts
(`eval_split="test_split"`). A client's lines are turned into character ids
(86-character vocabulary, plus pad, out-of-vocabulary, begin and end tokens),
joined and cut into sequences of 80 inputs and 80 shifted targets, as in TFF's
baseline.

Model: TFF's baseline 2-layer LSTM (8-dimensional embedding, two LSTM layers
of 256 units, dense logits over 90 tokens); 820,522 parameters. Accuracy
leaves out padding and out-of-vocabulary targets. Reddi et al. 2021
("Adaptive Federated Optimization", Table 2) report about 57% accuracy after
1,200 rounds of 10 clients (FedAvg 56.9%, FedYogi 57.2%).
"""

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff
from tffpipe.compat import char_prediction_models, keras_metrics
from tffpipe.compat import char_prediction_preprocessing as preprocessing

from tffpipe.tasks import public_data
from tffpipe.tasks import Task

FILENAME = "shakespeare.sqlite"
VOCAB_SIZE = len(preprocessing.CHAR_VOCAB) + 4  # + pad, oov, bos, eos
PAD, OOV, _BOS, _EOS = preprocessing.get_special_tokens()


def _regroup(sequence_length: int):
    """Snippets -> fixed-length token sequences of `sequence_length + 1` ids."""
    to_tokens = preprocessing._build_tokenize_fn(split_length=sequence_length + 1)

    def regroup(ds: tf.data.Dataset) -> tf.data.Dataset:
        ds = ds.map(to_tokens, num_parallel_calls=tf.data.AUTOTUNE).unbatch()
        return ds.batch(sequence_length + 1, drop_remainder=True)

    return regroup


def _features(sequence):
    return sequence[:-1], sequence[1:]


def create_task(*, sequence_length: int = 80, data_dir: str = public_data.DEFAULT_DATA_DIR) -> Task:
    """Builds the Shakespeare task.

    Args:
      sequence_length: characters per training sequence (80 in the literature).
      data_dir: the folder holding shakespeare.sqlite.
    """
    if sequence_length < 1:
        raise ValueError(f"sequence_length must be positive, got {sequence_length}")
    public_data.dataset_file(data_dir, FILENAME, FILENAME + ".lzma")
    train, test = tff.simulation.datasets.shakespeare.load_data(cache_dir=data_dir)
    return Task(
        name="shakespeare",
        description="Shakespeare next-character prediction by speaking role, 2-layer LSTM",
        model_builder=lambda: char_prediction_models.create_recurrent_model(
            vocab_size=VOCAB_SIZE, sequence_length=sequence_length
        ),
        loss_builder=lambda: tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics_builder=lambda: [keras_metrics.MaskedCategoricalAccuracy(name="accuracy", masked_tokens=[PAD, OOV])],
        train_data=train,
        eval_data=test,
        to_features=_features,
        eval_split="test_split",
        regroup=_regroup(sequence_length),
    )


def write_synthetic_data(data_dir: str, *, num_clients: int, snippets_per_client: int, seed: int = 0) -> str:
    """Writes random play lines in the format and splits of `shakespeare.sqlite`.

    For tests: `create_task` reads the file through TFF's own loader. Lines mix
    vocabulary characters with a few out-of-vocabulary ones.

    Returns:
      The path written.
    """
    rng = np.random.default_rng(seed)
    alphabet = np.array(list("abcdefghij klmnop,.!?ABCD\u00e9"))
    splits = {"train": {}, "test": {}}
    for i in range(num_clients):
        cid = f"ROLE_{i:03d}"
        for split, count in (("train", snippets_per_client), ("test", max(1, snippets_per_client // 3))):
            lines = ["".join(rng.choice(alphabet, rng.integers(20, 120))) for _ in range(count)]
            splits[split][cid] = {"snippets": np.array([line.encode() for line in lines], dtype=object)}
    path = f"{data_dir}/{FILENAME}"
    public_data.write_sql_client_data(path, splits)
    return path
