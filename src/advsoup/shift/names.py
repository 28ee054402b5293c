"""Names shared by the shift stages and their report (torch-free: the report imports them)."""
CLEAN, SKETCH, HARD = "clean", "sketch", "hard"
# How a run is scored on a shift: fixed modes, the k-shot choices, and the oracle (best on the scored images).
METHODS = ("clean_mode", "robust_mode", "kshot_soup", "adapter_finetune", "full_finetune", "oracle_soup")
AVERAGE = "average"
MEAN_CORRUPTION = "mean_corruption"
# The published shifted ImageNet sets (advsoup.shift.layout), by the names their jobs, files and tables use.
REAL_SETS = ("imagenet-c", "imagenet-a", "imagenet-r", "imagenet-sketch")
# How a run is scored on a real set: the soups only (fine-tuning on k is not run at that scale).
REAL_METHODS = ("clean_mode", "robust_mode", "kshot_soup", "oracle_soup")
# The same sets by their config keys (shift.real.<key>): the `--set` option, the DAG's `set` wildcard, file names.
REAL_SET_KEYS = {name.replace("-", "_"): name for name in REAL_SETS}
