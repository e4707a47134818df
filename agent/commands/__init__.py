"""Commands: the `edge-agent` CLI and its subcommands (run, check, demo, report, collect, ...)."""
