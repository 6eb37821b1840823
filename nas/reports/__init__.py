"""What a run shows and leaves behind: trials.csv, best.yaml, pareto.png and the closing
summary (`files`), the progress line (`progress`), TensorBoard events (`tb`)."""
