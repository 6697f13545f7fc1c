"""The ``text`` family: a token stream from a text file, cut into fixed-length windows for next-token prediction.

Two tokenisations (``dataset.tokenization``):

- ``char``: one token per character of one text file (``dataset.path``; null = the embedded Tiny Shakespeare,
  below). The file is cut into three contiguous splits, train / validation / test, by the fractions
  ``dataset.splits`` (of the characters, in that order; the default 0.9 / 0.05 / 0.05).
- ``word``: WikiText-103's layout, for a user's own corpus: ``dataset.path`` is a folder holding
  ``wiki.train.tokens``, ``wiki.valid.tokens`` and ``wiki.test.tokens``, already tokenised (tokens separated
  by spaces). Every line is its tokens and an end-of-line token ``<eos>`` (the convention of the published
  WikiText-103 models); the three files are the three splits.

The vocabulary is built from the training split alone: at character level its distinct characters in code-point
order; at word level its distinct tokens by falling count, then alphabetically, with ``<unk>`` (which WikiText
already uses for rare words) added when absent. A token of the validation or test split outside the vocabulary
reads as ``<unk>`` (added to a character vocabulary only when some character needs it). The vocabulary is
stored with the run (``vocabulary.json`` in the run folder, written under a temporary name then renamed); a
resume or an evaluation with another vocabulary is refused in one line (``check_vocabulary``): the ids of the
checkpoint would mean other tokens.

Windows: a training example is ``context + 1`` consecutive tokens of the training split, ``tokens`` its first
``context`` and ``targets`` its last ``context`` (int64, shape (B, context) each). Each epoch draws
``windows_per_epoch`` offsets uniformly in the training split from a generator seeded by (seed, epoch) only
(``sharding.make_generator``), shared by the ranks, which take strided shares; a resumed epoch therefore draws the
same windows. ``windows_per_epoch: null`` is one pass's worth, len(train) // context; ``scale.train_subset``
caps it (a number of windows). Evaluation reads the evaluation split (``dataset.eval_split``: ``test`` for the
tables, ``validation`` for tuning) as consecutive non-overlapping windows from its start, so each of its tokens
but the first is predicted exactly once per window pass; ``scale.eval_subset`` keeps the first N windows.

The embedded default, ``assets/tinyshakespeare.txt`` (1,115,394 bytes of ASCII, 65 distinct characters, SHA-256
86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed): about 40,000 lines of Shakespeare's plays,
speaker names then their lines, as collected for character-level language modelling by the char-rnn project
(karpathy/char-rnn, ``data/tinyshakespeare/input.txt`` at commit 6f9487a, an MIT-licensed repository). The
plays are in the public domain. The file carries no splits; the fractions above are this suite's.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from adamp_repro.data.base import (
    Batch,
    ClassificationData,
    DataInfo,
    positive_int,
    require,
    resolve_root,
)
from adamp_repro.data.sharding import STREAM_PERMUTATION, eval_shard, make_generator
from adamp_repro.errors import UsageError

EMBEDDED_TEXT = Path(__file__).resolve().parent / "assets" / "tinyshakespeare.txt"
EMBEDDED_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
TOKENIZATIONS = ("char", "word")
SPLITS = ("train", "validation", "test")
WIKITEXT_FILES = {"train": "wiki.train.tokens", "validation": "wiki.valid.tokens", "test": "wiki.test.tokens"}
UNK, EOS = "<unk>", "<eos>"
VOCABULARY_FILE = "vocabulary.json"
STREAM_TEXT_WINDOWS = STREAM_PERMUTATION  # the text family draws window offsets where images draw an order


# ------------------------------------------------------------------------------------------------- source
def text_files(cfg: Mapping[str, Any], base: Path | None = None) -> dict[str, Path]:
    """The files a ``text`` config reads: ``{"all": file}`` at character level, ``{split: file}`` at word level;
    a relative ``dataset.path`` is taken from ``base`` when given (``resolve_root``)."""
    tokenization = cfg.get("tokenization")
    if tokenization not in TOKENIZATIONS:
        raise UsageError(
            f"dataset.tokenization={tokenization!r} (dataset {cfg.get('name')!r}): expected one of {list(TOKENIZATIONS)}"
        )
    path = cfg.get("path")
    if tokenization == "char":
        return {"all": EMBEDDED_TEXT if path is None else resolve_root(path, base)}
    if path is None:
        raise UsageError(
            "dataset.path=null with dataset.tokenization=word: the embedded text is character level; point "
            "dataset.path at a folder holding wiki.train.tokens, wiki.valid.tokens and wiki.test.tokens"
        )
    folder = resolve_root(path, base)
    return {split: folder / name for split, name in WIKITEXT_FILES.items()}


def check_text_source(cfg: Any, base: Path | None = None) -> None:
    """Refuse, in one line (``UsageError``), a ``text`` config whose files are missing or empty, whose split
    fractions do not fit its tokenisation, or whose context is longer than a split. Reads a character-level file
    (to count its characters); at word level only the files' presence and size (the builder counts tokens)."""
    from adamp_repro.data.base import plain_config

    cfg = plain_config(cfg)
    files = text_files(cfg, base)
    for path in files.values():
        if not path.is_file():
            how = _how(cfg) if path == EMBEDDED_TEXT else "point dataset.path at an existing file or folder"
            raise UsageError(f"dataset.path: no text file at {path} (dataset {cfg.get('name')!r}); {how}")
        if path.stat().st_size == 0:
            raise UsageError(f"dataset.path: the text file {path} is empty (dataset {cfg.get('name')!r})")
    fractions = cfg.get("splits")
    if cfg["tokenization"] == "word":
        if fractions is not None:
            raise UsageError(
                f"dataset.splits={fractions}: a word-level corpus is split by its three files; set dataset.splits=null"
            )
        return
    split_fractions(fractions)
    length = len(_read(files["all"]))
    context = positive_int(cfg, "context")
    for split, size in zip(SPLITS, split_sizes(length, fractions)):
        check_context(context, size, split, files["all"])


def _how(cfg: Mapping[str, Any]) -> str:
    return str(
        cfg.get("how_to_obtain") or "point dataset.path at a text file (null: the embedded Tiny Shakespeare)"
    )


def split_fractions(fractions: Any) -> tuple[float, float, float]:
    """``dataset.splits`` as three fractions > 0 summing to 1 (train, validation, test), or a UsageError."""
    values = tuple(float(v) for v in fractions) if isinstance(fractions, (list, tuple)) else ()
    if len(values) != 3 or min(values) <= 0 or abs(sum(values) - 1.0) > 1e-9:
        raise UsageError(
            f"dataset.splits={fractions!r}: expected three fractions > 0 of the text (train, validation, test) "
            "summing to 1, e.g. [0.9, 0.05, 0.05]"
        )
    return values  # type: ignore[return-value]


def split_sizes(length: int, fractions: Sequence[float]) -> tuple[int, int, int]:
    """Token counts of the three contiguous splits of a stream of ``length`` tokens (the test split takes the
    rounding remainder)."""
    train = int(length * fractions[0])
    validation = int(length * fractions[1])
    return train, validation, length - train - validation


def check_context(context: int, size: int, split: str, where: Path) -> None:
    """A split must hold one window of ``context`` tokens and its next token."""
    if context + 1 > size:
        raise UsageError(
            f"dataset.context={context}: longer than the {split} split of {where} ({size} tokens; a window needs "
            f"context + 1); lower dataset.context or give more text"
        )


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


# ------------------------------------------------------------------------------------------------- tokens
@dataclass(frozen=True)
class TokenStreams:
    """Three splits as int64 token ids (1-D), their vocabulary (id -> token) and where they came from."""

    vocabulary: tuple[str, ...]
    train: torch.Tensor
    validation: torch.Tensor
    test: torch.Tensor
    source: str

    def split(self, name: str) -> torch.Tensor:
        return {"train": self.train, "validation": self.validation, "test": self.test}[name]


def word_tokens(text: str) -> list[str]:
    """WikiText's tokens of a text: each line's space-separated tokens, then ``<eos>``."""
    return [token for line in text.splitlines() for token in (*line.split(), EOS)]


def build_vocabulary(
    train: Sequence[str], tokenization: str, others: Sequence[Sequence[str]] = ()
) -> tuple[str, ...]:
    """The vocabulary of a training split's tokens (module docstring); ``others``: the other splits, read only to
    know whether a character vocabulary needs ``<unk>``."""
    if tokenization == "char":
        vocabulary = sorted(set(train))
        if any(token not in set(vocabulary) for other in others for token in set(other)):
            vocabulary.append(UNK)
        return tuple(vocabulary)
    counts = collections.Counter(train)
    ordered = sorted(counts, key=lambda token: (-counts[token], token))
    if UNK not in counts:
        ordered.append(UNK)
    return tuple(ordered)


def encode(tokens: Sequence[str], vocabulary: Sequence[str]) -> torch.Tensor:
    """Token ids (int64, 1-D) of ``tokens``; a token outside ``vocabulary`` is ``<unk>``'s id."""
    index = {token: i for i, token in enumerate(vocabulary)}
    unk = index.get(UNK, -1)
    ids = [index.get(token, unk) for token in tokens]
    if -1 in ids:  # only a training split's own tokens can be missing from its vocabulary, and they never are
        raise ValueError("a token is outside the vocabulary, which has no <unk>")
    return torch.tensor(ids, dtype=torch.int64)


def load_token_streams(cfg: Mapping[str, Any]) -> TokenStreams:
    """The splits and vocabulary of a ``text`` config (module docstring); ``check_text_source`` first."""
    check_text_source(cfg)
    files = text_files(cfg)
    tokenization = cfg["tokenization"]
    if tokenization == "char":
        text = _read(files["all"])
        sizes = split_sizes(len(text), split_fractions(cfg["splits"]))
        bounds = [0, sizes[0], sizes[0] + sizes[1], len(text)]
        parts = [text[bounds[i] : bounds[i + 1]] for i in range(3)]
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        embedded = " (embedded Tiny Shakespeare)" if files["all"] == EMBEDDED_TEXT else ""
        source = f"text file {files['all']}{embedded}, sha256 {digest[:16]}, char level, splits {list(cfg['splits'])}"
        tokens: list[Sequence[str]] = parts
    else:
        tokens = [word_tokens(_read(files[split])) for split in SPLITS]
        source = f"word-level corpus {files['train'].parent} (wiki.{{train,valid,test}}.tokens)"
    vocabulary = build_vocabulary(tokens[0], tokenization, tokens[1:])
    streams = [encode(split_tokens, vocabulary) for split_tokens in tokens]
    context = positive_int(cfg, "context")
    for split, stream in zip(SPLITS, streams):
        check_context(context, len(stream), split, files.get(split, files.get("all")))
    return TokenStreams(vocabulary, *streams, source=source)


# ------------------------------------------------------------------------------------------------- vocabulary
def vocabulary_digest(vocabulary: Sequence[str]) -> str:
    """SHA-256 of the vocabulary in id order (JSON), the fingerprint a run folder keeps."""
    return hashlib.sha256(json.dumps(list(vocabulary)).encode("utf-8")).hexdigest()


def write_vocabulary(run_dir: Path, vocabulary: Sequence[str], tokenization: str) -> Path:
    """Store the vocabulary in ``run_dir/vocabulary.json`` (temporary name, then rename)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / VOCABULARY_FILE
    payload = {
        "tokenization": tokenization,
        "sha256": vocabulary_digest(vocabulary),
        "tokens": list(vocabulary),
    }
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, ensure_ascii=False, indent=1), encoding="utf-8")
    os.replace(tmp, path)
    return path


def check_vocabulary(run_dir: Path, vocabulary: Sequence[str]) -> None:
    """Refuse (``UsageError``, one line) a run folder whose stored vocabulary is not ``vocabulary``: its
    checkpoint's token ids would mean other tokens. A folder without one (none stored yet) passes."""
    path = run_dir / VOCABULARY_FILE
    if not path.is_file():
        return
    stored = json.loads(path.read_text(encoding="utf-8"))
    if stored.get("tokens") != list(vocabulary):
        raise UsageError(
            f"{path}: the run was trained with another vocabulary ({len(stored.get('tokens', []))} tokens, sha256 "
            f"{str(stored.get('sha256'))[:12]}) than this data gives ({len(vocabulary)} tokens, sha256 "
            f"{vocabulary_digest(vocabulary)[:12]}); the text changed: use the text it was trained on, or start a "
            "new run (resume=never)"
        )


# ------------------------------------------------------------------------------------------------- batches
class TextData(ClassificationData):
    """Windows of a token stream for one rank (module docstring). A "class" is a token: ``num_classes`` is the
    vocabulary size V, ``class_names`` the vocabulary; ``mean`` / ``std`` are empty (no pixels).

    Attributes (besides :class:`ClassificationData`'s, whose ``num_train`` / ``num_eval`` count windows):
        context: T, tokens per window; vocabulary: V tokens in id order; tokenization: ``char`` or ``word``.
        train_stream, eval_stream: int64 token ids (1-D) on ``device``; eval_starts: int64 (num_eval,) offsets
        of the evaluation windows.
    """

    input_kind = "tokens"

    def __init__(
        self,
        info: DataInfo,
        streams: TokenStreams,
        *,
        tokenization: str,
        context: int,
        eval_split: str,
        windows_per_epoch: int,
        eval_windows: int | None,
        batch_size: int,
        eval_batch_size: int,
        seed: int,
        rank: int,
        world_size: int,
        device: torch.device,
    ) -> None:
        self.context, self.tokenization, self.vocabulary = context, tokenization, streams.vocabulary
        self.eval_split = eval_split
        self.train_stream = streams.train.to(device)
        self.eval_stream = streams.split(eval_split).to(device)
        starts = torch.arange(0, len(self.eval_stream) - context, context)
        self.eval_starts = starts if eval_windows is None else starts[:eval_windows]
        steps = windows_per_epoch // (batch_size * world_size)
        if steps == 0:
            raise UsageError(
                f"dataset.batch_size={batch_size} x world_size={world_size} is more than the {windows_per_epoch} "
                "training windows of an epoch; lower dataset.batch_size or raise dataset.windows_per_epoch"
            )
        super().__init__(
            info,
            num_train=steps * batch_size * world_size,
            num_eval=len(self.eval_starts),
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            steps_per_epoch=steps,
            seed=seed,
            rank=rank,
            world_size=world_size,
            device=device,
        )
        self._positions = torch.arange(context + 1, device=device)

    def window_offsets(self, epoch: int) -> torch.Tensor:
        """This rank's window offsets of epoch ``epoch``: int64 (steps_per_epoch * batch_size,), drawn from a
        generator seeded by (seed, epoch) alone and shared by the ranks (each takes a strided share)."""
        generator = make_generator(self.seed, epoch, STREAM_TEXT_WINDOWS)
        high = len(self.train_stream) - self.context  # the last offset whose window and next token fit
        offsets = torch.randint(0, high, (self.num_train,), generator=generator)
        return offsets[self.rank :: self.world_size]

    def _windows(self, stream: torch.Tensor, offsets: torch.Tensor) -> Batch:
        windows = stream[offsets.to(self.device).unsqueeze(1) + self._positions]  # (B, T + 1)
        return windows[:, :-1], windows[:, 1:]

    def train_batches(self, epoch: int) -> Iterator[Batch]:
        """``(tokens, targets)``, int64 (batch_size, context) each, ``steps_per_epoch`` batches."""
        offsets = self.window_offsets(epoch)
        for step in range(self.steps_per_epoch):
            yield self._windows(
                self.train_stream, offsets[step * self.batch_size : (step + 1) * self.batch_size]
            )

    def eval_batches(self) -> Iterator[Batch]:
        """This rank's evaluation windows in order (every window on exactly one rank)."""
        starts = self.eval_starts[eval_shard(self.num_eval, self.rank, self.world_size)]
        for begin in range(0, len(starts), self.eval_batch_size):
            yield self._windows(self.eval_stream, starts[begin : begin + self.eval_batch_size])

    def bind_run_folder(self, run_dir: Path, *, resuming: bool, write: bool) -> None:
        """Store the vocabulary with the run, or refuse a resume whose folder holds another (``check_vocabulary``)."""
        if resuming:
            check_vocabulary(run_dir, self.vocabulary)
        if write and not (resuming and (run_dir / VOCABULARY_FILE).is_file()):
            write_vocabulary(run_dir, self.vocabulary, self.tokenization)


def build_text_data(
    cfg: Mapping[str, Any],
    *,
    seed: int,
    train_subset: int | None,
    eval_subset: int | None,
    rank: int,
    world_size: int,
    device: torch.device,
) -> TextData:
    """Build the ``text``-family data of ``cfg`` (keys: configs/dataset/tinyshakespeare.yaml). ``train_subset``
    caps the training windows per epoch, ``eval_subset`` the evaluation windows."""
    streams = load_token_streams(cfg)
    context = positive_int(cfg, "context")
    eval_split = str(require(cfg, "eval_split"))
    if eval_split not in ("validation", "test"):
        raise UsageError(f"dataset.eval_split={eval_split!r}: expected validation or test")
    windows = cfg.get("windows_per_epoch") or len(streams.train) // context
    if train_subset is not None:
        windows = min(windows, int(train_subset))
    info = DataInfo(
        num_classes=len(streams.vocabulary),
        mean=(),
        std=(),
        label=str(require(cfg, "label")),
        class_names=streams.vocabulary,
        source=streams.source,
    )
    return TextData(
        info,
        streams,
        tokenization=str(cfg["tokenization"]),
        context=context,
        eval_split=eval_split,
        windows_per_epoch=int(windows),
        eval_windows=eval_subset,
        batch_size=positive_int(cfg, "batch_size"),
        eval_batch_size=positive_int(cfg, "eval_batch_size"),
        seed=seed,
        rank=rank,
        world_size=world_size,
        device=device,
    )
