"""Tiny random models and a BPE tokenizer trained on the spot: offline and fast."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

CORPUS = [
    "the cat sat on the mat",
    "a dog barked at the mailman",
    "stocks fell sharply on monday",
    "the team won the final match",
    "new phone released with a faster chip",
    "i love this movie so much",
    "this is the worst service ever",
    "what a boring afternoon",
    "is this message spam or ham",
    "free prize call now to claim",
    "see you at lunch tomorrow",
    "the government announced a new policy",
]
LABELS = ["negative", "neutral", "positive"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def tiny_tokenizer(chat: bool = False) -> PreTrainedTokenizerFast:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "<s>", "</s>", "<|user|>", "<|assistant|>"]
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(
        CORPUS * 4, trainers.BpeTrainer(vocab_size=200, special_tokens=specials, show_progress=False)
    )
    if not chat:
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",  # sentence pairs as BERT joins them, second segment type 1
            special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
        )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        bos_token="<s>",
        eos_token="</s>",
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )
    if chat:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_classifier(seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=200,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=len(LABELS),
        id2label=dict(enumerate(LABELS)),
        label2id={label: i for i, label in enumerate(LABELS)},
    )
    return BertForSequenceClassification(config).eval()


def tiny_causal_lm(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=200,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        pad_token_id=0,
        bos_token_id=4,
        eos_token_id=5,
    )
    return LlamaForCausalLM(config).eval()


def add_lora(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """A LoRA adapter (r=4, q/v) with non-zero B so that every adapter matrix has a gradient."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    peft_model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    )
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    return peft_model.eval()


def save_classifier(path: Path, seed: int = 0) -> Path:
    tiny_classifier(seed).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def save_causal_lm(path: Path, seed: int = 0, lora: bool = True) -> Path:
    model = tiny_causal_lm(seed)
    base = path / "base"
    model.save_pretrained(base)
    tiny_tokenizer(chat=True).save_pretrained(base)
    if not lora:
        return base
    adapter = path / "adapter"
    add_lora(model, seed).save_pretrained(adapter)
    tiny_tokenizer(chat=True).save_pretrained(adapter)
    config_path = adapter / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = str(base.resolve())
    config_path.write_text(json.dumps(config))
    return adapter
