"""`stackoverflow_nwp`: Next-word prediction on Stack Overflow posts, one client per user.

Data: TFF's Stack Overflow (`stackoverflow.sqlite`, loaded by
`tff.simulation.datasets.stackoverflow.load_data`, 342,477 training users with
135,818,730 sentences; the test split, posts after 2018-01-01, has 204,088
users) and its word counts (`stackoverflow.word_count`, from
`stackoverflow.word_count.tar.bz2`). Evaluation uses the test split
(`eval_split="test_split"`), as the literature does. Each sentence becomes
20 input and 20 target word ids over the 10,000 most frequent words plus pad,
out-of-vocabulary, begin and end tokens (TFF's baseline preprocessing).

Model: TFF's baseline LSTM (96-dimensional embedding, one LSTM of 670 units,
a 96-unit projection, dense logits over 10,004 tokens); 4,050,748 parameters.
`accuracy` leaves out padding, out-of-vocabulary and end-of-sentence
targets. Reddi et al. 2021 ("Adaptive Federated Optimization", Table 2)
report 19.5% (FedAvg) to 25.2% (FedAdam, FedYogi) after 1,500 rounds of 50
clients.
"""

import os

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff
from tffpipe.compat import keras_metrics, word_prediction_models
from tffpipe.compat import word_prediction_preprocessing as preprocessing

from tffpipe.program import files
from tffpipe.tasks import public_data
from tffpipe.tasks import Task

FILENAME = "stackoverflow.sqlite"
WORD_COUNTS = "stackoverflow.word_count"


def load_vocab(data_dir: str, vocab_size: int) -> list[str]:
    """The `vocab_size` most frequent words of the word-count file.

    Read here rather than with `tff.simulation.datasets.stackoverflow.
    load_word_counts`, which checks the SHA-256 of the archive it keeps and
    downloads again when the archive is absent, even if the extracted file is
    present. Also found in `data_dir/datasets/`, where TFF's loader puts it.
    """
    tff_layout = os.path.join(os.path.expanduser(data_dir), "datasets", WORD_COUNTS)
    if os.path.exists(tff_layout):
        path = tff_layout
    else:
        path = public_data.dataset_file(data_dir, WORD_COUNTS, WORD_COUNTS + ".tar.bz2")
    vocab = []
    with open(path) as f:
        for line in f:
            vocab.append(line.split()[0])
            if len(vocab) == vocab_size:
                break
    return vocab


def _to_features(vocab: list[str], sequence_length: int):
    to_ids = preprocessing.build_to_ids_fn(vocab, sequence_length)

    def features(example):
        ids = to_ids(example)
        ids = tf.pad(ids, [[0, sequence_length + 1 - tf.size(ids)]])
        ids = tf.ensure_shape(ids, [sequence_length + 1])
        return ids[:-1], ids[1:]

    return features


def create_task(
    *,
    vocab_size: int = 10000,
    sequence_length: int = 20,
    data_dir: str = public_data.DEFAULT_DATA_DIR,
) -> Task:
    """Builds the Stack Overflow next-word prediction task.

    Args:
      vocab_size: the most frequent words kept; others are out of vocabulary.
      sequence_length: words per sentence, truncated or padded (20 in the
        literature).
      data_dir: the folder holding stackoverflow.sqlite and
        stackoverflow.word_count.
    """
    if vocab_size < 1 or sequence_length < 1:
        raise ValueError("vocab_size and sequence_length must be positive")
    vocab = load_vocab(data_dir, vocab_size)
    public_data.dataset_file(data_dir, FILENAME, FILENAME + ".lzma")
    train, _, test = tff.simulation.datasets.stackoverflow.load_data(cache_dir=data_dir)
    special = preprocessing.get_special_tokens(len(vocab))
    masked = [special.padding, special.end_of_sentence, *special.out_of_vocab]
    extended_vocab = len(vocab) + special.get_number_of_special_tokens()
    return Task(
        name="stackoverflow_nwp",
        description=f"Stack Overflow next-word prediction by user, {len(vocab):,}-word LSTM",
        model_builder=lambda: word_prediction_models.create_recurrent_model(extended_vocab),
        loss_builder=lambda: tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics_builder=lambda: [keras_metrics.MaskedCategoricalAccuracy(name="accuracy", masked_tokens=masked)],
        train_data=train,
        eval_data=test,
        to_features=_to_features(vocab, sequence_length),
        eval_split="test_split",
    )


def write_synthetic_data(data_dir: str, *, num_clients: int, sentences_per_client: int, seed: int = 0) -> str:
    """Writes random posts and word counts in the formats of the real files.

    For tests: `stackoverflow.sqlite` with the train, heldout and test splits
    and every feature of the real file, and `stackoverflow.word_count`, so
    `create_task` reads them through TFF's loader.

    Returns:
      The path of the SQLite file.
    """
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(60)]
    splits = {"train": {}, "heldout": {}, "test": {}}
    for i in range(num_clients):
        cid = f"{i:08d}"
        for split in splits:
            n = sentences_per_client if split == "train" else max(1, sentences_per_client // 4)
            sentences = [" ".join(rng.choice(words, rng.integers(3, 30))) for _ in range(n)]
            splits[split][cid] = {
                "creation_date": np.array([b"2010-01-01 00:00:00.000+00:00"] * n, dtype=object),
                "score": np.zeros(n, np.int64),
                "tags": np.array([b"python"] * n, dtype=object),
                "title": np.array([b"a title"] * n, dtype=object),
                "tokens": np.array([s.encode() for s in sentences], dtype=object),
                "type": np.array([b"question"] * n, dtype=object),
            }
    path = f"{data_dir}/{FILENAME}"
    public_data.write_sql_client_data(path, splits)
    counts = "".join(f"{w} {1000 - i}\n" for i, w in enumerate(words))
    files.write_text_atomic(f"{data_dir}/{WORD_COUNTS}", counts)
    return path
