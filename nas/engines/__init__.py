"""Where jobs train: the protocol every engine and job source keeps (`protocol`), how one
job is evaluated (`evaluator`), and the local engine (`local`); NNI's is `nas.nni`."""
