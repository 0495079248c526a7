"""Build a tiny generative reward model (GRM) locally, for tests and the README demo.

There is no model hub here, so every test that needs "a real transformers model" uses one built
by this module: a byte-level BPE tokenizer trained on the GRM prompt templates plus synthetic
conversations, a randomly initialised Llama-architecture causal LM (head_dim 64, so vLLM's GPU
attention backends accept it), fine-tuned by the project's own trainer (``tribunal train sft``,
DeepSpeed ZeRO-0, one process on CPU) on synthetic (prompt, completion) pairs whose completions
follow the SPEC §2 three-line format::

    Specific Criteria: ...
    Analysis: ...
    Scores: \\boxed{a, b}

The model learns the *format*: most temperature-1.0 samples for a two-response prompt parse as
valid scores. It is not a judge: which response it prefers is about chance (the toy GRM of
``training/toy`` is the one that judges). The build with the defaults is committed
(``training/models/tiny-grm``, 3.5 MB); rebuilding it takes a few minutes on two CPU cores
and gives the same weights given the seed (and the torch thread count).

Input: nothing (all data is generated in code; prompts are rendered with ``tribunal.jobs.grm.protocol`` and
its built-in templates). Output: a directory loadable with
``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained`` (safetensors),
plus ``tribunal_model.json`` describing the build and recording the template the jobs default to
(``template`` and ``template_single``: ``default``).

Run::

    python -m tribunal.training.tiny_model --output training/models/tiny-grm --train-steps 300 --seed 0
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import pathlib
import random
import sys
import time
from collections.abc import Callable, Iterator, Sequence

from tribunal.training.model_record import MANIFEST_NAME, template_keys  # light: stdlib and the text protocol

__all__ = [
    "CHAT_TEMPLATE",
    "COMMITTED",
    "MANIFEST_NAME",
    "SyntheticExample",
    "build_tiny_model",
    "iter_synthetic_examples",
    "main",
    "synthetic_examples",
]

# The templates the model is trained on (``default`` for 1-4 responses, ``single`` for one), as its
# manifest records them for the jobs: a default-trained model scores one response with ``default``.
TEMPLATE = "default"
# The committed build with the defaults (seed 0, 300 steps): what the tests and `make demo-tiny`
# load. `python -m tribunal.training.tiny_model --output training/models/tiny-grm` rebuilds it.
COMMITTED = pathlib.Path(__file__).resolve().parent / "models" / "tiny-grm"

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|im_end|>"  # generation stops at the end of the assistant turn
PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
SPECIAL_TOKENS = [PAD_TOKEN, BOS_TOKEN, IM_START, EOS_TOKEN]

# ChatML. The generation prompt ends with "assistant\n", so a completion starts with its text.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{ '<|im_start|>assistant\\n' }}"
    "{%- endif -%}"
)

# ---------------------------------------------------------------------------------------------
# Prompts come from tribunal.jobs.grm.protocol, the one home of the GRM text protocol, so the model is trained
# on exactly the text the jobs render.


def _template_corpus() -> list[str]:
    """The built-in templates' text, for the tokenizer."""
    from tribunal.jobs.grm.protocol import load_template

    # The SPEC templates only: the tiny model (and its tokenizer) stays what the tests were written
    # against when new built-ins (the toy task's) are added.
    return [load_template(name).body for name in ("default", "single", "rm_r1_pairwise")]


# ---------------------------------------------------------------------------------------------
# Synthetic data. Every draw goes through one random.Random, so the data is a function of the seed.

_COUNTRIES = [
    ("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Spain", "Madrid"),
    ("Canada", "Ottawa"), ("Egypt", "Cairo"), ("Kenya", "Nairobi"), ("Peru", "Lima"),
    ("Norway", "Oslo"), ("Chile", "Santiago"), ("India", "New Delhi"), ("Greece", "Athens"),
]
_THINGS = ["the sea", "autumn", "a cat", "the moon", "rain", "a mountain", "coffee", "winter"]
_TASKS = [
    ("boil an egg", "Put the egg in boiling water for nine minutes, then cool it."),
    ("reverse a list in Python", "Use my_list[::-1] or call my_list.reverse()."),
    ("plant a tree", "Dig a wide hole, set the roots in, refill with soil and water well."),
    ("write a cover letter", "Open with the role, show two achievements, close with thanks."),
    ("sort a list in Python", "Call sorted(items) for a new list or items.sort() in place."),
    ("make tea", "Boil water, steep the tea for three minutes, then remove the leaves."),
]
_WORDS = [("cat", "chat"), ("house", "maison"), ("water", "eau"), ("book", "livre"),
          ("sun", "soleil"), ("bread", "pain"), ("friend", "ami"), ("green", "vert")]
_BAD_ANSWERS = ["I am not sure.", "I cannot help with that.", "Bananas are yellow.", "No.",
                "Please ask someone else.", "The weather is nice today."]
# Common English, so text the tests bring (RewardBench-like data) still tokenizes compactly.
_COMMON_ENGLISH = """
the of and to a in is it you that he was for on are with as I his they be at one have this from
or had by hot word but what some we can out other were all there when up use your how said an
each she which do their time if will way about many then them write would like so these her long
make thing see him two has look more day could go come did number sound no most people my over
know water than call first who may down side been now find any new work part take get place made
live where after back little only round man year came show every good me give our under name very
through just form sentence great think say help low line differ turn cause much mean before move
right boy old too same tell does set three want air well also play small end put home read hand
port large spell add even land here must big high such follow act why ask men change went light
kind off need house picture try us again animal point mother world near build self earth father
head stand own page should country found answer school grow study still learn plant cover food sun
four between state keep eye never last let thought city tree cross farm hard start might story saw
far sea draw left late run don't while press close night real life few north open seem together
next white children begin got walk example ease paper group always music those both mark often
letter until mile river car feet care second book carry took science eat room friend began idea
fish mountain stop once base hear horse cut sure watch color face wood main enough plain girl
usual young ready above ever red list though feel talk bird soon body dog family direct pose leave
song measure door product black short numeral class wind question happen complete ship area half
rock order fire south problem piece told knew pass since top whole king space heard best hour better
true during hundred five remember step early hold west ground interest reach fast verb sing listen
six table travel less morning ten simple several vowel toward war lay against pattern slow center
love person money serve appear road map rain rule govern pull cold notice voice unit power town
fine certain fly fall lead cry dark machine note wait plan figure star box noun field rest correct
able pound done beauty drive stood contain front teach week final gave green oh quick develop ocean
warm free minute strong special mind behind clear tail produce fact street inch multiply nothing
course stay wheel full force blue object decide surface deep moon island foot system busy test
record boat common gold possible plane stead dry wonder laugh thousand ago ran check game shape
equate miss brought heat snow tire bring yes distant fill east paint language among grand ball yet
wave drop heart present heavy dance engine position arm wide sail material size vary settle speak
weight general ice matter circle pair include divide syllable felt perhaps pick sudden count square
reason length represent art subject region energy hunt probable bed brother egg ride cell believe
fraction forest sit race window store summer train sleep prove lone leg exercise wall catch mount
wish sky board joy winter sat written wild instrument kept glass grass cow job edge sign visit past
soft fun bright gas weather month million bear finish happy hope flower clothe strange gone jump
baby eight village meet root buy raise solve metal whether push seven paragraph third shall held
hair describe cook floor either result burn hill safe cat century consider type law bit coast copy
phrase silent tall sand soil roll temperature finger industry value fight lie beat excite natural
view sense ear else quite broke case middle kill son lake moment scale loud spring observe child
straight consonant nation dictionary milk speed method organ pay age section dress cloud surprise
quiet stone tiny climb cool design poor lot experiment bottom key iron single stick flat twenty skin
smile crease hole trade melody trip office receive row mouth exact symbol die least trouble shout
except wrote seed tone join suggest clean break lady yard rise bad blow oil blood touch grew cent mix
team wire cost lost brown wear garden equal sent choose fell fit flow fair bank collect save control
decimal gentle woman captain practice separate difficult doctor please protect noon whose locate ring
character insect caught period indicate radio spoke atom human history effect electric expect crop
modern element hit student corner party supply bone rail imagine provide agree thus capital won't
chair danger fruit rich thick soldier process operate guess necessary sharp wing create neighbor
wash bat rather crowd corn compare poem string bell depend meat rub tube famous dollar stream fear
sight thin triangle planet hurry chief colony clock mine tie enter major fresh search send yellow
gun allow print dead spot desert suit current lift rose continue block chart hat sell success company
subtract event particular deal swim term opposite wife shoe shoulder spread arrange camp invent
cotton born determine quart nine truck noise level chance gather shop stretch throw shine property
column molecule select wrong gray repeat require broad prepare salt nose plural anger claim continent
oxygen sugar death pretty skill women season solution magnet silver thank branch match suffix
especially fig afraid huge sister steel discuss forward similar guide experience score apple bought
led pitch coat mass card band rope slip win dream evening condition feed tool total basic smell
valley nor double seat arrive master track parent shore division sheet substance favor connect post
spend chord fat glad original share station dad bread charge proper bar offer segment duck
instant market degree populate chick dear enemy reply drink occur support speech nature range steam
motion path liquid log meant quotient teeth shell neck function algorithm python code error return
"""

_CRITERIA = ["Accuracy", "Clarity", "Brevity", "Correctness", "Completeness", "Helpfulness",
             "Relevance", "Style", "Safety", "Creativity"]
_GOOD_ADJ = ["correct", "clear", "helpful", "accurate", "complete", "precise"]
_MID_ADJ = ["vague", "partly correct", "too short", "incomplete"]
_BAD_ADJ = ["wrong", "off-topic", "unhelpful", "irrelevant", "evasive"]


@dataclasses.dataclass(frozen=True)
class SyntheticExample:
    """One training pair: the user turn (a rendered GRM prompt) and the target completion."""

    prompt: str
    """The user message, already a rendered GRM prompt."""
    completion: str
    """The three-line GRM output the model should write."""
    n: int
    """How many responses the prompt holds."""
    template: str
    """Which prompt: ``"default"`` (scores 1..10) or ``"single"`` (one response, score 0/1)."""


def _query_and_answers(rng: random.Random) -> tuple[str, str, str]:
    """A user query, a good answer and a mediocre answer."""
    kind = rng.randrange(5)
    if kind == 0:
        country, capital = rng.choice(_COUNTRIES)
        other = rng.choice([c for _, c in _COUNTRIES if c != capital])
        return (f"What is the capital of {country}?", f"The capital of {country} is {capital}.",
                f"It might be {other}.")
    if kind == 1:
        thing = rng.choice(_THINGS)
        return (f"Write a two-line poem about {thing}.",
                f"Softly {thing} turns to gold,\na quiet story, gently told.",
                f"{thing.capitalize()} is nice.")
    if kind == 2:
        task, answer = rng.choice(_TASKS)
        return (f"How do I {task}?", answer, f"You can {task} easily.")
    if kind == 3:
        a, b = rng.randrange(2, 60), rng.randrange(2, 60)
        wrong = a + b + rng.choice([-3, -1, 1, 2, 10])
        return (f"What is {a} + {b}?", f"{a} + {b} = {a + b}.", f"It is about {wrong}.")
    word, french = rng.choice(_WORDS)
    return (f"Translate '{word}' into French.", f"'{word}' is '{french}' in French.",
            f"Maybe '{word}e'.")


def _context(rng: random.Random, query: str) -> list[dict]:
    """The conversation (chat messages, last turn the query); sometimes with an earlier turn."""
    if rng.random() < 0.25:
        greeting = rng.choice(["Hi!", "Hello there.", "Good morning."])
        reply = rng.choice(["Hello! How can I help?", "Hi, what do you need?"])
        return [{"role": "user", "content": greeting}, {"role": "assistant", "content": reply},
                {"role": "user", "content": query}]
    return [{"role": "user", "content": query}]


def _user_turn(template_name: str, context: list[dict], responses: list[str], hint: int | None = None) -> str:
    from tribunal.jobs.grm.protocol import build_messages, load_template

    (message,) = build_messages(load_template(template_name), context, responses, hint=hint)
    return message["content"]


def _criteria_line(rng: random.Random) -> str:
    first, second = rng.sample(_CRITERIA, 2)
    w = rng.choice([50, 60, 70])
    return f"Specific Criteria: {first} ({w}%), {second} ({100 - w}%)."


def _default_example(rng: random.Random, n: int) -> SyntheticExample:
    query, good, mid = _query_and_answers(rng)
    responses, scores, adjs = [], [], []
    for _ in range(n):
        quality = rng.choices(("good", "mid", "bad"), weights=(2, 1, 1))[0]
        if quality == "good":
            responses.append(good)
            scores.append(rng.randint(7, 10))
            adjs.append(rng.choice(_GOOD_ADJ))
        elif quality == "mid":
            responses.append(mid)
            scores.append(rng.randint(4, 6))
            adjs.append(rng.choice(_MID_ADJ))
        else:
            responses.append(rng.choice(_BAD_ANSWERS))
            scores.append(rng.randint(1, 3))
            adjs.append(rng.choice(_BAD_ADJ))
    hint = None
    if n >= 2 and rng.random() < 0.1:  # hinted: the named response scores strictly highest
        hint = max(range(n), key=lambda i: scores[i]) + 1
        top = min(10, max(scores) + 1)
        scores = [top if i == hint - 1 else min(s, top - 1) for i, s in enumerate(scores)]
    if n == 1:
        analysis = f"Analysis: The response is {adjs[0]}."
    else:  # one clause per response, in order: the score count can follow the clause count
        analysis = "Analysis: " + "; ".join(f"Response {i + 1} is {a}" for i, a in enumerate(adjs)) + "."
    boxed = ", ".join(str(s) for s in scores)
    completion = f"{_criteria_line(rng)}\n{analysis}\nScores: \\boxed{{{boxed}}}"
    prompt = _user_turn("default", _context(rng, query), responses, hint=hint)
    return SyntheticExample(prompt=prompt, completion=completion, n=n, template="default")


def _single_example(rng: random.Random) -> SyntheticExample:
    query, good, mid = _query_and_answers(rng)
    correct = rng.random() < 0.5
    response = good if correct else rng.choice([mid, rng.choice(_BAD_ANSWERS)])
    adj = rng.choice(_GOOD_ADJ if correct else _BAD_ADJ)
    completion = (f"{_criteria_line(rng)}\nAnalysis: The response is {adj}.\n"
                  f"Scores: \\boxed{{{int(correct)}}}")
    prompt = _user_turn("single", _context(rng, query), [response])
    return SyntheticExample(prompt=prompt, completion=completion, n=1, template="single")


_N_WEIGHTS = (1, 4, 2, 1)  # how often a default-template example has n = 1, 2, 3, 4 responses


def iter_synthetic_examples(seed: int) -> Iterator[SyntheticExample]:
    """An endless deterministic stream: n in 1..4 (mostly 2), ~10% single-response 0/1."""
    rng = random.Random(seed)
    while True:
        if rng.random() < 0.1:
            yield _single_example(rng)
        else:
            yield _default_example(rng, rng.choices((1, 2, 3, 4), weights=_N_WEIGHTS)[0])


def synthetic_examples(count: int, seed: int) -> list[SyntheticExample]:
    """The first ``count`` examples of :func:`iter_synthetic_examples`."""
    return list(itertools.islice(iter_synthetic_examples(seed), count))


# ---------------------------------------------------------------------------------------------
# Building.


def train_tokenizer(corpus: list[str], vocab_size: int, split_digits: bool = False):
    """Byte-level BPE (any text round-trips) wrapped as a PreTrainedTokenizerFast.

    ``split_digits``: every digit its own token (arithmetic is learnable digit by digit)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    if split_digits:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
        )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        additional_special_tokens=[IM_START],
        model_max_length=4096,
        padding_side="left",  # batched generation pads on the left
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def sft_rows(count: int, seed: int) -> list[dict]:
    """The first ``count`` synthetic examples as SFT corpus rows (``schemas.arrow.SFT``): the
    rendered prompt as the user turn, the three-line completion as the assistant turn."""
    rows = []
    for i, ex in enumerate(synthetic_examples(count, seed)):
        prompt = [{"role": "user", "content": ex.prompt}]
        completion = [{"role": "assistant", "content": ex.completion}]
        rows.append({"id": f"tiny-{seed}-{i}", "sample_index": 0, "hinted": False, "permutation": list(range(ex.n)),
                     "messages": prompt + completion, "prompt": prompt, "completion": completion})
    return rows


def _train_with_the_trainer(base: pathlib.Path, work: pathlib.Path, *, seed: int, train_steps: int, batch_size: int,
                            learning_rate: float, log_every: int, quiet: bool) -> dict:
    """``tribunal train sft`` (one process, DeepSpeed ZeRO-0) for ``train_steps`` steps of
    ``batch_size`` fresh synthetic examples; returns the run's summary with its last logged loss."""
    import subprocess

    from tribunal.training.data import write_sft_corpus

    corpus = write_sft_corpus(sft_rows(train_steps * batch_size, seed), work / "corpus", job="tiny-model", rows_per_group=64,
                              template=TEMPLATE)
    run = work / "run"
    cmd = [sys.executable, "-m", "tribunal.jobs.cli", "train", "sft", "--data", str(corpus), "--model", str(base),
           "--output", str(run), "--nproc", "1", "--micro-batch", str(batch_size), "--max-steps", str(train_steps),
           "--lr", str(learning_rate), "--warmup-steps", str(max(1, train_steps // 10)), "--lr-schedule", "cosine", "--seed", str(seed),
           "--log-every", str(log_every), "--save-every", str(train_steps)]
    proc = subprocess.run(cmd, capture_output=quiet, text=True)
    if proc.returncode:
        raise RuntimeError(f"`tribunal train sft` failed (exit {proc.returncode})" + (f":\n{proc.stderr[-3000:]}" if quiet else ""))
    summary = json.loads((run / "train_summary.json").read_text(encoding="utf-8"))
    losses = [json.loads(line)["loss"] for line in (run / "train_log.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    summary["final_loss"] = losses[-1] if losses else None
    summary["export"] = str(run / "model")
    return summary


def build_tiny_model(
    output_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    train_steps: int = 300,
    hidden_size: int = 128,
    num_layers: int = 2,
    head_dim: int = 64,
    intermediate_size: int | None = None,
    vocab_size: int = 3000,
    batch_size: int = 8,
    learning_rate: float = 6e-3,
    max_position_embeddings: int = 4096,
    log_every: int = 50,
    log: Callable[[str], None] | None = print,
) -> pathlib.Path:
    """Train a tokenizer, random-init a Llama causal LM, fine-tune it on CPU, save; return the dir.

    ``hidden_size`` must be a multiple of ``head_dim`` (64 keeps vLLM's attention backends happy).
    ``train_steps=0`` saves the random-init model. ``log`` gets one line per ``log_every`` steps.
    """
    if hidden_size % head_dim:
        raise ValueError(f"hidden_size={hidden_size} is not a multiple of head_dim={head_dim}")
    if train_steps < 0:
        raise ValueError(f"train_steps={train_steps} must be >= 0")
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    t0 = time.perf_counter()
    out = pathlib.Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)

    # Tokenizer corpus: template text (repeated so its phrases merge into few tokens) plus
    # synthetic prompts and outputs drawn from a stream separate from the training stream.
    corpus_examples = synthetic_examples(400, seed=seed + 1_000_003)
    corpus = _template_corpus() * 20 + [_COMMON_ENGLISH] * 3
    corpus += [ex.prompt for ex in corpus_examples[:40]]
    corpus += [ex.completion for ex in corpus_examples]
    tokenizer = train_tokenizer(corpus, vocab_size)

    torch.manual_seed(seed)
    n_heads = hidden_size // head_dim
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_heads,
        head_dim=head_dim,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())

    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    final_loss = None
    if train_steps > 0:
        import shutil
        import tempfile

        with tempfile.TemporaryDirectory(prefix="tribunal-tiny-") as tmp:
            base = pathlib.Path(tmp) / "base"
            model.save_pretrained(base, safe_serialization=True)
            tokenizer.save_pretrained(base)
            summary = _train_with_the_trainer(base, pathlib.Path(tmp), seed=seed, train_steps=train_steps, batch_size=batch_size,
                                              learning_rate=learning_rate, log_every=log_every, quiet=log is None)
            final_loss = summary["final_loss"]
            for f in pathlib.Path(summary["export"]).iterdir():
                if f.is_file():
                    shutil.copy(f, out / f.name)
    else:
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
    make_loadable_by_transformers_4(out)
    seconds = time.perf_counter() - t0
    manifest = {
        "kind": "tribunal tiny GRM (synthetic, format-only)",
        "architecture": "LlamaForCausalLM",
        **template_keys(TEMPLATE),
        "seed": seed,
        "train_steps": train_steps,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "hidden_size": hidden_size,
        "num_layers": num_layers,
        "head_dim": head_dim,
        "vocab_size": len(tokenizer),
        "num_parameters": n_params,
        "final_loss": final_loss,
        "seconds": round(seconds, 3),
        "trainer": "tribunal train sft (DeepSpeed ZeRO-0, one process)" if train_steps > 0 else None,
        "versions": {"torch": torch.__version__, "transformers": _version("transformers"),
                     "tokenizers": _version("tokenizers")},
    }
    (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    if log is not None:
        loss_text = "n/a" if final_loss is None else f"{final_loss:.4f}"
        log(f"built {out} params={n_params} vocab={len(tokenizer)} steps={train_steps} "
            f"final_loss={loss_text} seconds={seconds:.1f}")
    return out


def make_loadable_by_transformers_4(out: pathlib.Path) -> None:
    """Rewrite the two transformers-5-only spellings, so engines pinned to transformers 4.x
    (vLLM releases often are) load the same directory; transformers 5 reads both spellings."""
    tok_path = out / "tokenizer_config.json"
    tok_cfg = json.loads(tok_path.read_text(encoding="utf-8"))
    tok_cfg["tokenizer_class"] = "PreTrainedTokenizerFast"  # v5 saves "TokenizersBackend"
    extra = tok_cfg.pop("extra_special_tokens", None)  # a list in v5, a dict of names in v4
    if extra:
        tok_cfg["additional_special_tokens"] = list(extra)
    tok_path.write_text(json.dumps(tok_cfg, indent=2) + "\n", encoding="utf-8")
    cfg_path = out / "config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    rope = cfg.get("rope_parameters") or {}
    if "rope_theta" in rope:  # v4 reads a top-level rope_theta
        cfg.setdefault("rope_theta", rope["rope_theta"])
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tribunal.training.tiny_model", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True, help="directory to write the model into")
    parser.add_argument("--train-steps", type=int, default=300, help="CPU fine-tuning steps (0 = random init)")
    parser.add_argument("--seed", type=int, default=0, help="seed for data, init and training")
    parser.add_argument("--hidden-size", type=int, default=128, help="model width (multiple of 64)")
    parser.add_argument("--num-layers", type=int, default=2, help="transformer layers")
    args = parser.parse_args(argv)
    build_tiny_model(
        args.output,
        seed=args.seed,
        train_steps=args.train_steps,
        hidden_size=args.hidden_size,
        num_layers=args.num_layers,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
