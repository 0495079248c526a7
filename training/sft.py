"""GRM SFT: next-token loss on the completion only, for the DeepSpeed trainer (``training/trainer.py``).

Input: the SFT corpus (``schemas.arrow.SFT``: ``messages``, whose last message is the assistant's
completion). One row = one example. Text is rendered as the engines render it: the prompt is the
chat template over ``messages[:-1]`` with the generation prompt (what ``render_chat`` gives the
engine before it generates), the completion is the rest of the template over all ``messages``
(the trajectory text and the end-of-turn token), tokenized without special tokens as the engines
do. The loss covers the completion tokens only, end-of-turn included; each step's loss is the sum
over tokens divided by the completion-token count of the whole step on every rank. Rows longer
than ``--max-len`` are filtered and counted (``too_long``), never cut into an empty completion.

Run::

    tribunal train sft --data rft_run/sft --model BASE --output ckpt/grm
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tribunal.schemas import arrow
from tribunal.schemas import columns as c
from tribunal.schemas.errors import TribunalError

IGNORE = -100


@dataclass
class Prepared:
    """A micro-batch as tensors; ``norm`` is this micro-batch's share of the step's normaliser."""

    tensors: dict[str, Any]
    norm: float  # completion tokens (SFT) or examples (meta-RM)
    tokens: int  # all tokens, for tokens/s
    examples: int


def load_tokenizer(model: str):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(model, local_files_only=True)
    except OSError as e:
        raise TribunalError(f"cannot load tokenizer of {model}: {str(e).splitlines()[0]}") from None
    if tok.chat_template is None:
        raise TribunalError(f"{model}: the tokenizer has no chat template (SFT renders chats with it)")
    return tok


def right_pad(seqs: list[list[int]], pad: int, labels: list[list[int]] | None = None):
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    lab = torch.full((len(seqs), width), IGNORE, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
        if labels is not None:
            lab[i, : len(s)] = torch.tensor(labels[i])
    return ids, mask, lab


class SftTask:
    REQUIRED = {c.MESSAGES: arrow.SFT.field(c.MESSAGES).type}
    has_eval = False

    def __init__(self, cfg, world: int) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        self.cfg, self.engine = cfg, None
        self.lock = threading.Lock()  # the tokenizer is used by the prefetch thread and by evaluation
        self.tokenizer = load_tokenizer(cfg.model)
        try:
            self.model = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=torch.float32, local_files_only=True)
        except OSError as e:
            raise TribunalError(f"cannot load model {cfg.model}: {str(e).splitlines()[0]}") from None
        self.pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        import inspect

        self.keep_logits = "logits_to_keep" in inspect.signature(self.model.forward).parameters
        self.attn_implementation = getattr(self.model.config, "_attn_implementation", None)

    def encode(self, messages: list[dict]) -> tuple[list[int], list[int]]:
        """(prompt ids, completion ids) exactly as the engines see them."""
        tok = self.tokenizer
        prompt = tok.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
        full = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
        if not full.startswith(prompt):
            raise TribunalError("the chat template does not render the prompt as a prefix of the whole chat: SFT needs one that does")
        p = tok(prompt, add_special_tokens=False)["input_ids"]
        comp = tok(full[len(prompt) :], add_special_tokens=False)["input_ids"]
        return p, comp

    def prepare(self, rows, counters: dict[str, int]) -> Prepared:
        seqs, labels, n_comp = [], [], 0
        for messages in rows.column(c.MESSAGES).to_pylist():
            if not messages or messages[-1][c.ROLE] != "assistant":
                counters["no_completion"] = counters.get("no_completion", 0) + 1
                continue
            p, comp = self.encode(messages)
            if len(p) + len(comp) > self.cfg.max_len:
                counters["too_long"] = counters.get("too_long", 0) + 1
                continue
            seqs.append(p + comp)
            labels.append([IGNORE] * len(p) + comp)
            n_comp += len(comp)
        counters["trained"] = counters.get("trained", 0) + len(seqs)
        if not seqs:  # every row filtered: still one forward/backward, so every rank steps together
            seqs, labels = [[self.pad]], [[IGNORE]]
        ids, mask, lab = right_pad(seqs, self.pad, labels)
        return Prepared({"input_ids": ids, "attention_mask": mask, "labels": lab}, float(n_comp), int(mask.sum()), len(labels))

    def loss_sum(self, p: Prepared, dtype):
        """Sum of the completion tokens' negative log-likelihoods (label t predicted at t - 1).

        The batch is right-padded, so under the causal mask no real token sees the padding: the
        attention mask is left out where the attention is SDPA or eager (SDPA keeps its causal
        fast path; flash kernels get it, to unpad). Logits are computed only from the earliest
        completion of the batch on (``logits_to_keep``): the prompts' positions have no label.
        Same loss and gradients as the full computation (checked by a test)."""
        import torch.nn.functional as F

        t = p.tensors
        labels = t["labels"]
        width = labels.shape[1]
        kwargs = {"input_ids": t["input_ids"]}
        if self.attn_implementation not in ("sdpa", "eager"):
            kwargs["attention_mask"] = t["attention_mask"]
        start = 0
        if self.keep_logits:
            labelled = (labels[:, 1:] != IGNORE).any(dim=0).nonzero()
            start = int(labelled[0]) if len(labelled) else width - 1  # the first position that predicts a label
            kwargs["logits_to_keep"] = width - start
        logits = self.engine(**kwargs).logits.float()
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, start + 1 :].reshape(-1), ignore_index=IGNORE, reduction="sum")

    def export(self, path: Path, rank: int) -> None:
        from tribunal.training.trainer import gathered_state_dict

        sd = gathered_state_dict(self.engine)
        if rank == 0:
            save_hf(self.engine.module, sd, self.tokenizer, path)


def save_hf(module, state_dict, tokenizer, path: Path) -> None:
    """Hugging Face directory: config, safetensors weights, tokenizer + chat template, generation config."""
    path.mkdir(parents=True, exist_ok=True)
    if state_dict is not None:  # a gathered copy shares no storage: drop tied parameters' second names
        first: dict[int, str] = {}
        tied = {name for name, param in module.named_parameters(remove_duplicate=False) if first.setdefault(id(param), name) != name}
        state_dict = {k: v for k, v in state_dict.items() if k not in tied}
    module.save_pretrained(str(path), state_dict=state_dict)
    tokenizer.save_pretrained(str(path))
    if getattr(module, "generation_config", None) is not None and module.can_generate():
        module.generation_config.save_pretrained(str(path))
