"""The commands and what they share: argument types (`args`), the search's options
(`options`), one setup (`setup`), one run-folder lifecycle (`rundir`), stage 2 and the
reports of a run (`runs`); the commands `search`, `final`, `proxy`."""
