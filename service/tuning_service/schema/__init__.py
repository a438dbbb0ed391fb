"""One pydantic definition of every request body and public object of the API, native and OpenAI, with their
limits and defaults; /openapi.json, validation (api/params.py, errors.PROBLEMS), the docs' tables and the
dashboard's form all come from here. The trainer's job schema (tuning_trainer.config) is embedded, not
copied.

- base.py: request bodies (null means the default), response objects (extra fields forbidden), query strings
- jobs.py: the create body, the job and its error and metrics, records, checkpoints, health, job queries
- files.py: the file object, uploads, file queries
- openai.py: OpenAI's create body (derived from the native one), job, event and checkpoint objects
- errors.py: the error envelope
"""
