"""Arrow schemas of every artefact tribunal writes. Writers are always given these; never inferred."""

from __future__ import annotations

import pyarrow as pa

from tribunal.schemas import columns as c

# Typed parse failures (SPEC section 2, rule 4).
PARSE_ERRORS = ("no_scores", "wrong_count", "not_integer", "out_of_range", "truncated")

MESSAGE = pa.struct([pa.field(c.ROLE, pa.string()), pa.field(c.CONTENT, pa.string())])

# A validated, canonical sample: what every job works on after the validate stage.
SAMPLE = pa.schema(
    [
        pa.field(c.ID, pa.string(), nullable=False),
        pa.field(c.CONTEXT, pa.list_(MESSAGE), nullable=False),
        pa.field(c.RESPONSES, pa.list_(pa.string()), nullable=False),
        pa.field(c.LABELS, pa.list_(pa.float64())),
    ]
)

TRAJECTORY = pa.schema(
    [
        pa.field(c.ID, pa.string(), nullable=False),
        pa.field(c.SAMPLE_INDEX, pa.int32(), nullable=False),
        pa.field(c.HINTED, pa.bool_(), nullable=False),
        pa.field(c.N_RESPONSES, pa.int32(), nullable=False),
        pa.field(c.PERMUTATION, pa.list_(pa.int32()), nullable=False),
        pa.field(c.TEXT, pa.string(), nullable=False),
        pa.field(c.SCORES, pa.list_(pa.int32())),
        pa.field(c.PARSE_ERROR, pa.string()),
        pa.field(c.PRINCIPLES, pa.string()),
        pa.field(c.CRITIQUE, pa.string()),
        pa.field(c.LABELS, pa.list_(pa.float64())),
        pa.field(c.CORRECT, pa.bool_()),
        # The judged sample itself (original order), so every shard is self-contained: reducers
        # rebuild the exact prompt from it without the input. k copies compress to one in
        # Parquet's dictionary pages.
        pa.field(c.CONTEXT, pa.list_(MESSAGE), nullable=False),
        pa.field(c.RESPONSES, pa.list_(pa.string()), nullable=False),
        pa.field(c.FINISH_REASON, pa.string()),
        pa.field(c.PROMPT_TOKENS, pa.int32()),
        pa.field(c.COMPLETION_TOKENS, pa.int32()),
        # Set by `rft` (hinted sampling on), null for `sample`.
        pa.field(c.VERDICT, pa.string()),
        pa.field(c.OUTCOME, pa.string()),
    ]
)

# Trajectories after `metarm-score`: the same rows plus the meta-RM's probability.
TRAJECTORY_SCORED = pa.schema([*TRAJECTORY, pa.field(c.META_SCORE, pa.float64())])

# One row per accepted RFT trajectory: a chat SFT example (TRL/DeepSpeed-Chat readable `messages`).
SFT = pa.schema(
    [
        pa.field(c.ID, pa.string(), nullable=False),
        pa.field(c.SAMPLE_INDEX, pa.int32(), nullable=False),
        pa.field(c.HINTED, pa.bool_(), nullable=False),
        pa.field(c.PERMUTATION, pa.list_(pa.int32()), nullable=False),
        # messages[:-1] is the prompt exactly as the GRM saw it; messages[-1] the assistant's completion
        pa.field(c.MESSAGES, pa.list_(MESSAGE), nullable=False),
        # The same chat split as TRL's conversational prompt-completion format (also read by
        # OpenRLHF and torchtune): prompt = messages[:-1], completion = [messages[-1]].
        pa.field(c.PROMPT, pa.list_(MESSAGE), nullable=False),
        pa.field(c.COMPLETION, pa.list_(MESSAGE), nullable=False),
    ]
)

# One row per (non-hinted) trajectory: the meta-RM input (SPEC section 5) and its 0/1 label.
METARM = pa.schema(
    [
        pa.field(c.ID, pa.string(), nullable=False),
        pa.field(c.SAMPLE_INDEX, pa.int32(), nullable=False),
        pa.field(c.HINTED, pa.bool_(), nullable=False),
        pa.field(c.MESSAGES, pa.list_(MESSAGE), nullable=False),
        pa.field(c.LABEL, pa.int8(), nullable=False),
    ]
)

# RFT funnel (SPEC section 4): every sample ends in exactly one outcome ...
OUTCOMES = ("accepted", "too_easy", "no_correct", "invalid")
# ... and every trajectory is accepted or rejected for one of these reasons.
REJECTION_REASONS = ("incorrect", "too_easy", "hint_unused") + PARSE_ERRORS

VOTE = pa.schema(
    [
        pa.field(c.ID, pa.string(), nullable=False),
        pa.field(c.N_RESPONSES, pa.int32(), nullable=False),
        pa.field(c.K, pa.int32(), nullable=False),
        pa.field(c.VALID, pa.int32(), nullable=False),
        pa.field(c.TOTALS, pa.list_(pa.int64())),
        pa.field(c.BEST, pa.int32()),
        pa.field(c.TIED, pa.bool_(), nullable=False),
        pa.field(c.LABELS, pa.list_(pa.float64())),
        pa.field(c.CORRECT, pa.bool_()),
        pa.field(c.CREDIT, pa.float64()),
    ]
)

QUARANTINE = pa.schema(
    [
        pa.field(c.ID, pa.string()),
        pa.field(c.REASON, pa.string(), nullable=False),
        pa.field(c.DETAIL, pa.string()),
        pa.field(c.SOURCE_PATH, pa.string()),
        pa.field(c.RAW, pa.string()),
    ]
)


# Input contract violations: the `reason` values of quarantined rows.
QUARANTINE_REASONS = (
    "no_responses",  # responses missing, null or empty
    "null_text",  # a null response, prompt or message content
    "invalid_utf8",  # text that does not decode as UTF-8
    "no_prompt",  # neither a usable context nor a prompt
    "bad_context",  # context present but malformed (empty, bad role, last turn not the user's)
    "label_count_mismatch",  # labels given but not one per response
    "bad_label",  # a null or non-finite label
    "labels_no_unique_max",  # n >= 2 and correctness needed, but the top label is shared
    "duplicate_id",  # the same id appears more than once in the input
    "unsupported_n",  # the prompt template does not take this many responses (e.g. pairwise, n != 2)
    "no_labels",  # the job needs labels (rft) and the sample has none
)
# Reasons an engine stage gives a sample it sets aside (jobs/pipeline/stages.py: GenerateStage),
# beside the validation reasons above.
STAGE_QUARANTINE_REASONS = (
    "prompt_too_long",  # the rendered prompt fills the model's context (checked in tokens before the engine)
    "stage_error",  # rendering or generating this sample raised; the detail holds the error's first line
)


# --- rollouts -----------------------------------------------------------------------------------
# A validated rollout: what `score` works on after validation. Keyed by (prompt_id, rollout_index).
ROLLOUT = pa.schema(
    [
        pa.field(c.PROMPT_ID, pa.string(), nullable=False),
        pa.field(c.ROLLOUT_INDEX, pa.int32(), nullable=False),
        pa.field(c.CONTEXT, pa.list_(MESSAGE), nullable=False),
        pa.field(c.RESPONSE, pa.string(), nullable=False),
        pa.field(c.REFERENCE, pa.string()),
        pa.field(c.DATA_SOURCE, pa.string()),
    ]
)

# A scored rollout (`score` output): the rollout, its reward, and how it was obtained.
SCORED_ROLLOUT = pa.schema(
    list(ROLLOUT)
    + [
        pa.field(c.REWARD, pa.float64()),
        pa.field(c.REWARD_REASON, pa.string()),
        pa.field(c.R_RAW, pa.float64()),
        pa.field(c.R_PRIME, pa.float64()),
        pa.field(c.FORMAT_OK, pa.bool_()),
        pa.field(c.SCORED_TOKENS, pa.int32()),
        pa.field(c.VALID_SCORES, pa.int32()),
    ]
)

# One row per prompt: the std filter's decision (`filter` writes these under _prompts/).
FILTER_DECISION = pa.schema(
    [
        pa.field(c.PROMPT_ID, pa.string(), nullable=False),
        pa.field(c.STEP, pa.int64(), nullable=False),
        pa.field(c.N_ROLLOUTS, pa.int64(), nullable=False),
        pa.field(c.N_REWARDS, pa.int64(), nullable=False),
        pa.field(c.PROMPT_STD, pa.float64()),
        pa.field(c.THRESHOLD, pa.float64()),
        pa.field(c.KEPT, pa.bool_(), nullable=False),
        pa.field(c.FILTER_REASON, pa.string(), nullable=False),
    ]
)

# Rollout input contract violations (`score`): the `reason` values of quarantined rollouts.
ROLLOUT_QUARANTINE_REASONS = (
    "no_prompt",  # neither a usable context nor a prompt
    "bad_context",  # context present but malformed
    "null_text",  # a null response or message content
    "invalid_utf8",  # text that does not decode as UTF-8
    "empty_response",  # response missing or empty
    "no_reference",  # prob mode and the reference answer is missing or empty
    "duplicate_rollout",  # the same (prompt_id, rollout_index) twice in the input
)
