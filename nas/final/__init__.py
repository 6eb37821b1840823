"""Stage 2: retrain the search's best and the reference on fresh seeds, choose B0 on
search-validation, judge it on test (`plan`, `stats`, `report`; the command: `nas.cli.final`)."""
