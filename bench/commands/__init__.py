"""The commands: what each `cli.py` command does once its arguments are parsed. The top layer: a
command may use any layer below (drivers, Ray, reports). Each module imports torch, pandas, MLflow
only inside the commands, after the mistakes that need no data are refused (configs.checked).

  configs   the command line's config (bench.core.flags' table), the run --resume continues, early checks
  engines   Ray for kfold --executor ray and tune/nested --workers: flags checked, connected, sized
  training  kfold, tune, nested, suite, speed
  tools     report, compare, predict, datasets check/list, presets
  faults    every fault as one line and a documented exit status (docs/faults.md)
"""
