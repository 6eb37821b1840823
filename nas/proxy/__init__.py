"""The proxy check: does the proxy rank architectures like a longer training does?
(`sampling`, `check`: the jobs and zero-cost scores, `stats`, `report`; the command:
`nas.cli.proxy`)."""
