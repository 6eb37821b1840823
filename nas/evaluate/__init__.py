"""What trains one candidate: the evaluators (`trial`), the trainer (`train`), the proxy
data (`data`), the budget and its measurement identity (`budget`), the result (`result`),
the device (`device`) and the training-free scores (`zero_cost`). No search logic here."""
