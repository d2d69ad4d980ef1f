"""Research code that only the command-line tools use (`index-builder demo`, `exemplar-eval`,
`benchmarks/`); serving (`app/`, `worker/`, `exemplar.explain` and the modules it uses) never
imports it.

- `datasets`: the packaged corpora (tweets, SMS spam, BBC topics), sampling and the
  instruction mixture.
- `finetune`: the demos' fine-tuning loop.
- `demos`: ready-made demos (`tweets`, `chat`): fine-tune, build the index, cached.
- `step_effects`: one-step fine-tuning effects of selections (`StepValidator`, `xi_plus`,
  `xi_jsd`, paired differences, reliability): the paper's validation by fine-tuning.
- `evaluation`: the paper's grid (every estimator x strategy x k on held-out queries), its
  bounds, full-space scores and validation of the scored selections.
- `records`: a run's records as JSON lines, written and read back.
- `report`: the markdown reproduction report; `plots`: its PNG figures.
"""
