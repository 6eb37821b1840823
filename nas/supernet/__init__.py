"""A weight-sharing supernet over the search space: the model and exact extraction
(`model`), sandwich-rule training (`train`), scoring with inherited weights (`score`)."""
