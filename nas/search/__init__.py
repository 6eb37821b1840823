"""The search: the loop and its settings (`loop`, `settings`, `recipe`), the objective and the
records (`objective`, `records`), the policies for cheaper trials (`asha`, `prefilter`), a
fixed batch of specs (`batch`, `grid`), latency targets (`latency`) and the hand-over of a
source to another process (`handover`). The command is `nas.cli.search`."""
