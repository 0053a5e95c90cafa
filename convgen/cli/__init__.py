"""The `convgen` command: main (compile, show, check, explain and the parser), run, tune,
bench, and the argument helpers (args)."""
