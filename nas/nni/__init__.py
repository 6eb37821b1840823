"""The NNI engine: the same loop and trial code, run as an NNI experiment.

    config.py    the user's YAML, the CLI options, NNI's ExperimentConfig (no processes)
    engine.py    NniEngine: starts, polls (watchdog) and stops the experiment
    tuner.py     ControllerTuner: drives the job source inside NNI's dispatcher
    trial.py     `python -m nas.nni.trial`: one trial, reporting what it trained
    assessor.py  TrackingAssessor: which job an ending trial ran (+ Medianstop)

This file imports nothing: a trial must reach `nni.get_next_parameter()` before any of
our code can fail (see trial.py).
"""
