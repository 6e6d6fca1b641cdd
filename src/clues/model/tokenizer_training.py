"""Training the default model's own tokenizer: byte-level BPE with the ``tokenizers`` library.

Byte-level means every UTF-8 string encodes (the shipped data is en, zh, ja, fr, ru, es), with no
unknown token; the merges are learned from the pretraining split only, so no benchmark text shaped
the vocabulary.
"""

from __future__ import annotations

from typing import Iterable

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"


def train_tokenizer(texts: Iterable[str], vocab_size: int, model_max_length: int):
    """A :class:`transformers.PreTrainedTokenizerFast` with ``vocab_size`` entries, EOS and pad tokens.

    No BOS token: a prompt starts directly with its text, and ``clues.data.template.encode`` adds
    nothing special besides the EOS that ends each response.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        padding_side="right",
        model_max_length=model_max_length,
    )


def save_tokenizer(tokenizer, folder) -> None:
    """Save in a form both transformers 4.x and 5.x load.

    transformers 5 writes ``tokenizer_class: TokenizersBackend``, a name 4.x does not know; the
    class name ``PreTrainedTokenizerFast`` means the same in both. ``special_tokens_map.json`` is
    written too, for loaders that read the special tokens only from there.
    """
    import json
    from pathlib import Path

    folder = Path(folder)
    tokenizer.save_pretrained(folder)
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    for loading_only in ("is_local", "local_files_only"):  # how it was last loaded, not what it is
        config.pop(loading_only, None)
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    special = {"eos_token": tokenizer.eos_token, "pad_token": tokenizer.pad_token}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n", encoding="utf-8")
