"""Run-folder files shared by training, evaluation, the report and the entry points: atomic writes
(``atomic``), checkpoints (``checkpoint``) and metrics.json (``metrics``). Everything above imports it
downhill; it imports nothing of theirs."""
