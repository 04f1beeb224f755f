"""Background work on Redis/RQ: the worker entry point, the platform's task functions and the scheduler.

Owns async predictions, batch scoring runs, script runs, dataset fetches, callbacks, the janitor and cron
dispatch. Workers never fork per job, so sessions and the JVM stay warm. It imports `shared` and `inference`
(runtimes and the predictor run inside the worker), never a web app.
"""
