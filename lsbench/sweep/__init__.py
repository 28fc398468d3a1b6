"""`lsbench run`: suites (TOML) -> config grid -> isolated workers -> crash-safe results on disk.

    suite.py   load + validate suites, apply CLI overrides
    grid.py    the configs of a suite, their stable `config_id`, predicted memory
    worker.py  one config unit (plain dict in, plain dict row out) in an isolated process
    store.py   run directory: run.json, results.jsonl / results.csv, resume, reports/latest
    runner.py  the sweep loop: skip prediction, OOM follow-up skips, interrupt, resume
"""
