"""The registry process: the database and the artifact store.

Owns models, versions, aliases, services' desired state and their deployment backends (local processes or
Kubernetes), datasets, batch jobs and runs, API keys, and the internal routes the gateway reads its routing table
from. It imports `shared`, and `inference.runtimes` only to inspect and describe uploads; it never serves
predictions itself.
"""
