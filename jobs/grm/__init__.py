"""The GRM text protocol and its pure math: templates and parsing (``protocol``), permutations,
correctness, voting and the RFT funnel (``grm_math``), trajectory planning (``trajectories``), and
the column-wise forms the reducers run (polars): rendering the same prompts (``render_frame``) and
voting (``vote_frame``).

No Ray, no torch, no filesystem: other people's reward functions can import these.
"""
