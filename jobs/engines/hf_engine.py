"""transformers engine: the CPU default, also usable on a GPU when vLLM is not installed."""

from __future__ import annotations

from collections.abc import Sequence

from tribunal.jobs.engines import (
    EngineConfig,
    Generation,
    GenerationRequest,
    RequestResult,
    SamplingConfig,
    ScoreRequest,
    ScoreResult,
    continuation_span,
)
from tribunal.schemas.errors import TribunalError


class TransformersEngine:
    """``model.generate`` per request, ``num_return_sequences = n``.

    Each request is generated on its own, seeded with its own seed, so a trajectory's text depends
    only on (model, prompt, seed), never on which other samples shared its batch. That is what
    makes reruns and resumed runs reproducible on CPU.
    """

    def __init__(self, cfg: EngineConfig):
        import torch
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        device = cfg.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = "auto" if cfg.dtype == "auto" else getattr(torch, cfg.dtype)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(cfg.model, local_files_only=True, trust_remote_code=False)
            auto = AutoModelForSequenceClassification if cfg.task == "classify" else AutoModelForCausalLM
            # Weights from safetensors only (a pickle can run code), never code from the model directory.
            self.model = auto.from_pretrained(
                cfg.model, dtype=dtype, local_files_only=True, use_safetensors=True, trust_remote_code=False
            )
        except Exception as e:  # noqa: BLE001 - missing files, corrupt weights, a config transformers cannot read
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise TribunalError(f"cannot load model {cfg.model}: {type(e).__name__}: {first}") from None
        self.model.to(device).eval()
        # Positions the model was built for: a longer prompt is quarantined before it gets here.
        self.max_context = getattr(self.model.config, "max_position_embeddings", None)
        self.task = cfg.task
        self.device = device
        self._torch = torch
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    def render_chat(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)

    def _need(self, task: str, op: str) -> None:
        if self.task != task:
            raise TribunalError(f"{op} needs an engine built with task={task!r}; this one is task={self.task!r}")

    def generate(self, requests: Sequence[GenerationRequest], sampling: SamplingConfig, on_result=None) -> list[RequestResult]:
        self._need("generate", "generate")
        torch = self._torch
        eos = self.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        eos_ids.add(self.tokenizer.eos_token_id)
        results = []
        for req in requests:
            ids = self.tokenizer(req.prompt, add_special_tokens=False, return_tensors="pt")["input_ids"].to(self.device)
            torch.manual_seed(req.seed)
            greedy = sampling.temperature == 0
            # transformers refuses num_return_sequences > 1 with greedy decoding: ask once and
            # repeat the (deterministic) answer, as the vLLM engine does.
            with torch.inference_mode():
                out = self.model.generate(
                    ids,
                    attention_mask=torch.ones_like(ids),
                    do_sample=not greedy,
                    temperature=None if greedy else sampling.temperature,
                    top_p=None if greedy else sampling.top_p,
                    top_k=None,
                    max_new_tokens=sampling.max_tokens,
                    num_return_sequences=1 if greedy else req.n,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
            new = out[:, ids.shape[1] :].tolist()
            gens = []
            for row in new:
                stop_at = next((i for i, t in enumerate(row) if t in eos_ids), None)
                tokens = row if stop_at is None else row[:stop_at]
                gens.append(
                    Generation(
                        text=self.tokenizer.decode(tokens, skip_special_tokens=True),
                        finish_reason="stop" if stop_at is not None else "length",
                        completion_tokens=len(tokens) + (1 if stop_at is not None else 0),
                    )
                )
            if greedy:
                gens = gens * req.n
            results.append(RequestResult(prompt_tokens=ids.shape[1], generations=tuple(gens)))
            if on_result is not None:
                on_result(results[-1])
        return results

    def _padded(self, seqs: list[list[int]]):
        """Right-padded ids and attention mask for one batched forward pass."""
        torch = self._torch
        width = max(len(s) for s in seqs)
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        return ids.to(self.device), mask.to(self.device)

    def score_continuation(self, requests: Sequence[ScoreRequest], batch_size: int = 8) -> list[ScoreResult]:
        """Batched forward passes; the logits at position ``t - 1`` give token ``t``'s log-probability."""
        self._need("generate", "score_continuation")
        torch = self._torch
        spans = [continuation_span(self.tokenizer, r) for r in requests]
        results: list[ScoreResult] = []
        for b in range(0, len(spans), batch_size):
            chunk = spans[b : b + batch_size]
            ids, mask = self._padded([s[0] for s in chunk])
            with torch.inference_mode():
                logits = self.model(input_ids=ids, attention_mask=mask).logits.float()
            for row, (seq, first, last) in enumerate(chunk):
                logp = torch.log_softmax(logits[row, first - 1 : last - 1], dim=-1)
                target = torch.tensor(seq[first:last], device=logp.device)
                picked = logp.gather(1, target[:, None])[:, 0].tolist()
                results.append(ScoreResult(token_ids=tuple(seq[first:last]), logprobs=tuple(picked), prompt_tokens=len(seq)))
        return results

    def classify(self, texts: Sequence[str], batch_size: int = 8) -> list[float]:
        """sigmoid(logit) at each text's last token.

        The classifier head is applied to the hidden state at the last real token ourselves
        (``attention_mask``), rather than letting the model find it from ``pad_token_id``: a
        template whose last token equals the pad token would otherwise be pooled at the wrong place.
        """
        self._need("classify", "classify")
        torch = self._torch
        head = getattr(self.model, "score", None)
        if head is None or self.model.config.num_labels != 1:
            raise TribunalError("classify needs a one-logit decoder classifier (a *ForSequenceClassification with a `score` head, num_labels=1)")
        seqs = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        out: list[float] = []
        for b in range(0, len(seqs), batch_size):
            ids, mask = self._padded(seqs[b : b + batch_size])
            with torch.inference_mode():
                hidden = self.model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
                last = mask.sum(dim=1) - 1
                pooled = hidden[torch.arange(ids.shape[0], device=hidden.device), last]
                out.extend(torch.sigmoid(head(pooled).float()[:, 0]).tolist())
        return out
