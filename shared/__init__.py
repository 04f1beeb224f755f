"""Common code for every modelserve process: settings, errors, auth, DB, Redis, metrics, logging."""

from shared._metric_values import install_multiprocess_values

# Before any metric is built: every value of a process must come from one value class (see the module).
install_multiprocess_values()
