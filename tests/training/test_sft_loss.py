"""The SFT loss as the trainer computes it (no attention mask on right-padded batches, logits only
from the batch's first completion on) against the plain full computation: same loss, same grads."""

from __future__ import annotations

from types import SimpleNamespace

import pyarrow as pa
import pytest

from tribunal.schemas import arrow
from tribunal.training.tiny_model import sft_rows


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_the_trimmed_loss_equals_the_full_loss(tiny_model, attn):
    import torch
    import torch.nn.functional as F

    from tribunal.training import sft

    task = sft.SftTask(SimpleNamespace(model=tiny_model, max_len=4096), 1)
    task.model.config._attn_implementation = attn
    task.attn_implementation = attn
    task.engine = task.model
    rows = sft_rows(5, seed=11)
    rows[2]["messages"] = rows[2]["messages"][:-1] + [{"role": "assistant", "content": ""}]  # an empty completion
    p = task.prepare(pa.Table.from_pylist(rows, schema=arrow.SFT), {})
    t = p.tensors
    assert len({int(n) for n in t["attention_mask"].sum(dim=1)}) > 1  # rows of different lengths: padding

    def grads(fn):
        task.model.zero_grad()
        loss = fn()
        loss.backward()
        return loss.detach(), [q.grad.clone() for q in task.model.parameters()]

    def full():
        logits = task.model(input_ids=t["input_ids"], attention_mask=t["attention_mask"]).logits.float()
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), t["labels"][:, 1:].reshape(-1),
                               ignore_index=sft.IGNORE, reduction="sum")

    (want, want_grads), (got, got_grads) = grads(full), grads(lambda: task.loss_sum(p, torch.float32))
    assert torch.allclose(got, want, rtol=1e-5)
    for a, b in zip(got_grads, want_grads):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)
