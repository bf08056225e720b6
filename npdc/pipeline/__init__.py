"""The compression workflow, the top floor below the CLI: schedules, the stages as functions, and
the checkpointed run that chains them. It may import every floor below it (compress, codec,
runtime, evaluation); nothing below imports it.
"""
