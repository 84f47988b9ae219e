"""ptlearn's shipped experiment configs: one `get_config(arg=None)` file per experiment, some
with a `get_hyper(h)` sweep. Installed as the package `ptlearn.configs`, so
`ptlearn.load_config("sentiment_ptuning")` and `--config=sentiment_ptuning` find them anywhere;
in a checkout they are also the files `configs/NAME.py`."""
